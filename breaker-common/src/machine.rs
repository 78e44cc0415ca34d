//! The breaker state machine.
//!
//! One upstream's whole state is a single `u64` ([`BreakerWord`]), so every change is
//! one compare-and-swap: the kernel programs and the daemon (through an mmap of the
//! same array map) race on it without locks and without lost updates.
//!
//! Layout of the word, low bits first:
//!
//! | bits   | field                                                            |
//! |--------|------------------------------------------------------------------|
//! | 0..32  | `since_ms`: monotonic milliseconds (wrapping) of the last trip (OPEN), or of the entry to HALF_OPEN or its newest trial |
//! | 32..34 | state: CLOSED, OPEN, HALF_OPEN                                    |
//! | 34..46 | `count`: in its low 8 bits the streak, consecutive failures (CLOSED) or successes (HALF_OPEN); in its high 4, the `reopens` since the breaker last closed |
//! | 46..48 | `mode`: automatic, or an operator's override: forced open, forced closed, disabled |
//! | 48..56 | `in_flight`: trial connects admitted and not yet finished (HALF_OPEN) |
//! | 56..64 | `epoch`: bumped on every entry to HALF_OPEN, tags trial connects; only ever moves forward |

/// Bit layout of the word, named so that the daemon, the programs and the docs agree.
pub mod layout {
    pub const SINCE_SHIFT: u32 = 0;
    pub const SINCE_BITS: u32 = 32;
    pub const STATE_SHIFT: u32 = 32;
    pub const STATE_BITS: u32 = 2;
    pub const COUNT_SHIFT: u32 = 34;
    pub const COUNT_BITS: u32 = 12;
    pub const MODE_SHIFT: u32 = 46;
    pub const MODE_BITS: u32 = 2;
    pub const IN_FLIGHT_SHIFT: u32 = 48;
    pub const IN_FLIGHT_BITS: u32 = 8;
    pub const EPOCH_SHIFT: u32 = 56;
    pub const EPOCH_BITS: u32 = 8;
    /// Inside `count`: the streak (CLOSED's failures, HALF_OPEN's successes) in
    /// the low bits, the reopens since the breaker last closed above them. One
    /// layout in every state, read without branching on it (the packet path's
    /// verifier budget has no room for branches).
    pub const STREAK_BITS: u32 = 8;
    pub const REOPENS_SHIFT: u32 = STREAK_BITS;
    pub const REOPENS_BITS: u32 = COUNT_BITS - STREAK_BITS;

    /// The mask of a field `bits` wide, in the low bits.
    pub const fn mask(bits: u32) -> u64 {
        (1u64 << bits) - 1
    }

    // The fields tile the word exactly: no gap, no overlap.
    const _: () = assert!(SINCE_SHIFT + SINCE_BITS == STATE_SHIFT);
    const _: () = assert!(STATE_SHIFT + STATE_BITS == COUNT_SHIFT);
    const _: () = assert!(COUNT_SHIFT + COUNT_BITS == MODE_SHIFT);
    const _: () = assert!(MODE_SHIFT + MODE_BITS == IN_FLIGHT_SHIFT);
    const _: () = assert!(IN_FLIGHT_SHIFT + IN_FLIGHT_BITS == EPOCH_SHIFT);
    const _: () = assert!(EPOCH_SHIFT + EPOCH_BITS == 64);
}

use layout::*;

/// The `count` field's largest value.
pub const MAX_COUNT: u32 = mask(COUNT_BITS) as u32;
/// Largest `failure_threshold` and `success_threshold` the word can count to.
pub const MAX_STREAK: u32 = mask(STREAK_BITS) as u32;
/// Reopens the word remembers; the open time stops doubling long before (it
/// reaches `max_open_duration`).
pub const MAX_REOPENS: u32 = mask(REOPENS_BITS) as u32;
/// Largest `half_open_max_connections` the word can track.
pub const MAX_IN_FLIGHT: u32 = mask(IN_FLIGHT_BITS) as u32;
/// Compare-and-swap attempts before giving up on one update. Contention on one
/// upstream word is short; the bound exists for the verifier.
pub const CAS_RETRIES: usize = 8;

pub const STATE_CLOSED: u32 = 0;
pub const STATE_OPEN: u32 = 1;
pub const STATE_HALF_OPEN: u32 = 2;

/// Breaker state as a plain enum for logic; the wire form is the `u32` constants above.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum State {
    Closed,
    Open,
    HalfOpen,
}

impl State {
    #[inline(always)]
    pub const fn as_u32(self) -> u32 {
        match self {
            State::Closed => STATE_CLOSED,
            State::Open => STATE_OPEN,
            State::HalfOpen => STATE_HALF_OPEN,
        }
    }

    #[inline(always)]
    pub const fn from_u32(v: u32) -> State {
        match v {
            STATE_OPEN => State::Open,
            STATE_HALF_OPEN => State::HalfOpen,
            _ => State::Closed,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen => "half_open",
        }
    }
}

/// The thresholds one breaker runs with (a view of [`crate::abi::UpstreamPolicy`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Thresholds {
    pub failure_threshold: u32,
    pub success_threshold: u32,
    /// Application trials HALF_OPEN admits at once; 0 leaves recovery to probes.
    pub half_open_max_connections: u32,
    pub open_duration_ms: u32,
    /// The open time doubles at each reopen since the breaker last closed, up to
    /// this (never below `open_duration_ms`).
    pub max_open_duration_ms: u32,
    /// Up to this percent more open time, different for each trip (see
    /// [`open_duration_ms`]), so a fleet of hosts does not probe in step.
    pub open_jitter_pct: u32,
    /// How long HALF_OPEN may hold every trial slot taken before it treats the
    /// trials as lost and starts a new epoch: a trial whose end nobody saw must not
    /// hold the breaker shut.
    pub trial_lease_ms: u32,
}

/// The daemon counts as gone when its heartbeat is older than this: it beats
/// every probe-scheduler pass (20 ms), so only a dead or stuck daemon misses it.
pub const DAEMON_AWAY_MS: u32 = 3_000;

/// Whether the breaker turns new connects away (rejects or redirects all but
/// trials): automatic and not CLOSED, or forced open. What a connect still in
/// flight is judged by when its SYN has gone unanswered.
#[inline(always)]
pub fn turns_away(w: BreakerWord) -> bool {
    match w.mode() {
        Mode::Auto => w.state() != State::Closed,
        Mode::ForceOpen => true,
        Mode::ForceClosed | Mode::Disabled => false,
    }
}

/// Whether the daemon is gone: its newest heartbeat (`beat_ms`, 0 before the first)
/// is older than [`DAEMON_AWAY_MS`] at `now_ms`. Both wrap, like `since_ms`.
#[inline(always)]
pub const fn daemon_away(beat_ms: u32, now_ms: u32) -> bool {
    beat_ms == 0 || now_ms.wrapping_sub(beat_ms) > DAEMON_AWAY_MS
}

impl Thresholds {
    /// The thresholds to use while no daemon probes: HALF_OPEN admits at least one
    /// application trial, so a breaker whose recovery is probe-driven can still
    /// close (and is never held shut by a daemon that is not there).
    #[inline(always)]
    pub const fn without_daemon(self) -> Thresholds {
        let mut t = self;
        if t.half_open_max_connections == 0 {
            t.half_open_max_connections = 1;
        }
        t
    }
}

/// Who decides for a breaker: its state machine, or an operator's override. An
/// override holds until reset, whatever happens, and lives in the word itself, so
/// it survives reloads and restarts and changes with the same compare-and-swap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// The state machine decides (the default).
    Auto,
    /// Reject (or redirect) every connect; no probing, no trials.
    ForceOpen,
    /// Let every connect through; outcomes are still counted and reported.
    ForceClosed,
    /// Neither enforce nor count: connects pass as if breaker were not there.
    Disabled,
}

impl Mode {
    pub const ALL: [Mode; 4] = [
        Mode::Auto,
        Mode::ForceOpen,
        Mode::ForceClosed,
        Mode::Disabled,
    ];

    #[inline(always)]
    pub const fn as_u32(self) -> u32 {
        match self {
            Mode::Auto => 0,
            Mode::ForceOpen => 1,
            Mode::ForceClosed => 2,
            Mode::Disabled => 3,
        }
    }

    #[inline(always)]
    pub const fn from_u32(v: u32) -> Mode {
        match v & 3 {
            1 => Mode::ForceOpen,
            2 => Mode::ForceClosed,
            3 => Mode::Disabled,
            _ => Mode::Auto,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            Mode::Auto => "auto",
            Mode::ForceOpen => "force_open",
            Mode::ForceClosed => "force_closed",
            Mode::Disabled => "disabled",
        }
    }
}

/// The packed per-upstream state. See the module docs for the layout.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(transparent)]
pub struct BreakerWord(pub u64);

impl BreakerWord {
    /// A fresh breaker: CLOSED, epoch 0.
    pub const CLOSED: BreakerWord = BreakerWord(0);

    /// When the breaker tripped (OPEN), or entered HALF_OPEN or admitted its newest
    /// trial (HALF_OPEN): monotonic ms, wrapping.
    #[inline(always)]
    pub const fn since_ms(self) -> u32 {
        ((self.0 >> SINCE_SHIFT) & mask(SINCE_BITS)) as u32
    }
    #[inline(always)]
    pub const fn state(self) -> State {
        State::from_u32(((self.0 >> STATE_SHIFT) & mask(STATE_BITS)) as u32)
    }
    #[inline(always)]
    pub const fn count(self) -> u32 {
        ((self.0 >> COUNT_SHIFT) & mask(COUNT_BITS)) as u32
    }
    /// Consecutive failures (CLOSED) or successes (HALF_OPEN); 0 while OPEN.
    #[inline(always)]
    pub const fn streak(self) -> u32 {
        self.count() & mask(STREAK_BITS) as u32
    }
    /// Failed recovery attempts since the breaker last closed: 0 after a trip from
    /// CLOSED (and while CLOSED), one more at each failed HALF_OPEN trial (which
    /// reopens it) or failed probe (which keeps it HALF_OPEN), up to
    /// [`MAX_REOPENS`].
    #[inline(always)]
    pub const fn reopens(self) -> u32 {
        self.count() >> REOPENS_SHIFT
    }
    #[inline(always)]
    pub const fn mode(self) -> Mode {
        Mode::from_u32(((self.0 >> MODE_SHIFT) & mask(MODE_BITS)) as u32)
    }
    #[inline(always)]
    pub const fn in_flight(self) -> u32 {
        ((self.0 >> IN_FLIGHT_SHIFT) & mask(IN_FLIGHT_BITS)) as u32
    }
    #[inline(always)]
    pub const fn epoch(self) -> u8 {
        ((self.0 >> EPOCH_SHIFT) & mask(EPOCH_BITS)) as u8
    }

    #[inline(always)]
    pub const fn pack(state: State, since_ms: u32, count: u32, in_flight: u32, epoch: u8) -> Self {
        let count = if count > MAX_COUNT { MAX_COUNT } else { count };
        let in_flight = if in_flight > MAX_IN_FLIGHT {
            MAX_IN_FLIGHT
        } else {
            in_flight
        };
        BreakerWord(
            (since_ms as u64) << SINCE_SHIFT
                | (state.as_u32() as u64) << STATE_SHIFT
                | (count as u64) << COUNT_SHIFT
                | (in_flight as u64) << IN_FLIGHT_SHIFT
                | (epoch as u64) << EPOCH_SHIFT,
        )
    }

    /// The same word with `streak` (below the thresholds, so within its bits),
    /// its reopens kept.
    #[inline(always)]
    fn with_streak(self, streak: u32) -> Self {
        self.with_count(self.reopens() << REOPENS_SHIFT | streak)
    }

    #[inline(always)]
    fn with_count(self, count: u32) -> Self {
        Self::pack(
            self.state(),
            self.since_ms(),
            count,
            self.in_flight(),
            self.epoch(),
        )
    }

    #[inline(always)]
    fn with_in_flight(self, in_flight: u32) -> Self {
        Self::pack(
            self.state(),
            self.since_ms(),
            self.count(),
            in_flight,
            self.epoch(),
        )
    }

    /// Milliseconds since the current phase began, at `now_ms` (wrapping clock, so
    /// up to 24 days is measured right).
    #[inline(always)]
    pub const fn phase_ms(self, now_ms: u32) -> u32 {
        now_ms.wrapping_sub(self.since_ms())
    }

    /// CLOSED. Keeps the epoch: epochs only move forward, so a trial of an earlier
    /// HALF_OPEN phase can never match a later one.
    #[inline(always)]
    fn closed(self) -> Self {
        Self::pack(State::Closed, 0, 0, 0, self.epoch())
    }

    /// OPEN, tripped at `now_ms`: a reopen if it was not CLOSED (its open time
    /// grows), the first open otherwise. Keeps the epoch so stale trials stay stale.
    #[inline(always)]
    fn tripped(self, now_ms: u32) -> Self {
        // Without branches: one more for OPEN (1) and HALF_OPEN (2), none from
        // CLOSED (whatever its high bits hold); 16 saturates to 15.
        let state_bits = ((self.0 >> STATE_SHIFT) & mask(STATE_BITS)) as u32;
        let reopened = (state_bits + 1) >> 1 & 1;
        let reopens = (self.reopens() + 1) * reopened;
        let reopens = reopens - (reopens >> REOPENS_BITS);
        Self::pack(
            State::Open,
            now_ms,
            reopens << REOPENS_SHIFT,
            0,
            self.epoch(),
        )
    }

    /// HALF_OPEN from `now_ms`, with no trials nor successes yet, in a new epoch;
    /// the reopens carry on until it closes.
    #[inline(always)]
    fn half_opened(self, now_ms: u32) -> Self {
        Self::pack(
            State::HalfOpen,
            now_ms,
            self.reopens() << REOPENS_SHIFT,
            0,
            self.epoch().wrapping_add(1),
        )
    }
}

/// An operator's override: `mode` from now on, the rest of the word as it is (so
/// forcing and releasing keep the state the machine was in)...
#[inline(always)]
pub fn set_mode(w: BreakerWord, mode: Mode) -> Step<bool> {
    let next = BreakerWord(
        (w.0 & !(mask(MODE_BITS) << MODE_SHIFT)) | (mode.as_u32() as u64) << MODE_SHIFT,
    );
    Step {
        next,
        result: next != w,
    }
}

/// ...or back to automatic: CLOSED, the current streak's counts zeroed, and a new
/// epoch, so no trial admitted before the reset can count after it.
#[inline(always)]
pub fn reset(w: BreakerWord) -> Step<bool> {
    Step {
        next: BreakerWord::pack(State::Closed, 0, 0, 0, w.epoch().wrapping_add(1)),
        result: true,
    }
}

/// The word of a per-address upstream (whose breakers are its addresses'; its
/// own word holds only an operator's override), as a load finds it: CLOSED
/// with a new epoch, its mode kept. A word left out of CLOSED by the upstream's
/// earlier form would show as tripped for ever: nothing probes or trips it now.
#[inline(always)]
pub fn settle_per_address(w: BreakerWord) -> Step<bool> {
    if w.state() == State::Closed {
        return Step {
            next: w,
            result: false,
        };
    }
    Step {
        next: set_mode(reset(w).next, w.mode()).next,
        result: true,
    }
}

/// A CLOSED word whose count holds more than a streak (left by a daemon from
/// before reopens shared the field, when thresholds went to 4095) counts from 0
/// again: its high bits would read as reopens. Anything else is unchanged.
#[inline(always)]
pub fn settle_closed(w: BreakerWord) -> Step<bool> {
    let stale = w.state() == State::Closed && w.count() > MAX_STREAK;
    Step {
        // Only the count: an operator's override lives in the word too.
        next: if stale {
            BreakerWord(w.0 & !(mask(COUNT_BITS) << COUNT_SHIFT))
        } else {
            w
        },
        result: stale,
    }
}

/// What a connect hook does with a new connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// CLOSED: let it through and watch its outcome.
    Pass,
    /// HALF_OPEN: let it through as a trial of this epoch.
    Trial { epoch: u8 },
    /// OPEN, or HALF_OPEN with every trial slot taken: fail it fast or send it to the fallback.
    Reject,
    /// Disabled: let it through, unwatched and uncounted.
    Ignore,
}

impl Admission {
    /// As one integer, for the kernel's functions that return scalars only: the
    /// kind in the low 8 bits, a trial's epoch in bits 8-15.
    #[inline(always)]
    pub const fn pack(self) -> u32 {
        match self {
            Admission::Pass => 0,
            Admission::Trial { epoch } => 1 | (epoch as u32) << 8,
            Admission::Reject => 2,
            Admission::Ignore => 3,
        }
    }

    /// The admission [`Admission::pack`] made; anything else passes (fail open).
    #[inline(always)]
    pub const fn unpack(packed: u32) -> Admission {
        match packed & 0xff {
            1 => Admission::Trial {
                epoch: (packed >> 8) as u8,
            },
            2 => Admission::Reject,
            3 => Admission::Ignore,
            _ => Admission::Pass,
        }
    }
}

/// An outcome with the failure-rate trip it brings ([`record_rated`]'s
/// arguments), as one integer for the kernel's functions that take scalars
/// only: bit 0 success, bit 1 a trial (its epoch in bits 8-15), bit 2 the
/// window trips the breaker (in the epoch in bits 16-23).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RatedOutcome {
    pub outcome: Outcome,
    pub rate_trips: Option<u8>,
}

const RATED_SUCCESS: u32 = 1 << 0;
const RATED_TRIAL: u32 = 1 << 1;
const RATED_TRIPS: u32 = 1 << 2;

impl RatedOutcome {
    #[inline(always)]
    pub const fn pack(self) -> u32 {
        let success = if self.outcome.success {
            RATED_SUCCESS
        } else {
            0
        };
        let trial = match self.outcome.trial_epoch {
            Some(e) => RATED_TRIAL | (e as u32) << 8,
            None => 0,
        };
        let trips = match self.rate_trips {
            Some(e) => RATED_TRIPS | (e as u32) << 16,
            None => 0,
        };
        success | trial | trips
    }

    #[inline(always)]
    pub const fn unpack(bits: u32) -> RatedOutcome {
        RatedOutcome {
            outcome: Outcome {
                success: bits & RATED_SUCCESS != 0,
                trial_epoch: if bits & RATED_TRIAL != 0 {
                    Some((bits >> 8) as u8)
                } else {
                    None
                },
            },
            rate_trips: if bits & RATED_TRIPS != 0 {
                Some((bits >> 16) as u8)
            } else {
                None
            },
        }
    }
}

/// How one watched connect ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub success: bool,
    /// `Some(epoch)` if the connect was admitted as a HALF_OPEN trial.
    pub trial_epoch: Option<u8>,
}

/// The result of applying one event to a word.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Step<T> {
    pub next: BreakerWord,
    pub result: T,
}

impl<T> Step<T> {
    /// The state change this step makes, if any.
    #[inline(always)]
    pub fn transition(&self, prev: BreakerWord) -> Option<(State, State)> {
        let (from, to) = (prev.state(), self.next.state());
        if from == to {
            None
        } else {
            Some((from, to))
        }
    }
}

/// How long `w`, OPEN, stays open: `open_duration` doubled at each reopen since
/// the breaker last closed, at most `max_open_duration` (Envoy's growing ejection
/// time, Linkerd's backoff), plus up to `open_jitter_pct` percent. The jitter comes
/// from the trip time, so the kernel and the daemon agree on it and it never
/// changes within one open phase, while hosts that tripped at different moments
/// (their clocks count from their own boots) spread out.
///
/// The daemon writes `max_open_duration_ms >= open_duration_ms`, both at most 24 h,
/// and `open_jitter_pct <= 100`, so nothing here overflows; without a branch (the
/// packet path's verifier budget has no room), other values give other times,
/// never a fault.
#[inline(always)]
pub const fn open_duration_ms(w: BreakerWord, t: &Thresholds) -> u32 {
    grown_wait_ms(
        t.open_duration_ms,
        w.reopens(),
        t.max_open_duration_ms,
        t.open_jitter_pct,
        w.since_ms(),
    )
}

/// `base_ms` doubled `doublings` times, at most `max_ms`, plus up to
/// `jitter_pct` percent chosen by `seed`: the one growth of every wait (the open
/// time, the probe interval). Without a branch, for the packet path's verifier
/// budget; for `base_ms` and `max_ms` under 2^32, `doublings` at most 15 and
/// `jitter_pct` at most 100, nothing overflows.
#[inline(always)]
const fn grown_wait_ms(
    base_ms: u32,
    doublings: u32,
    max_ms: u32,
    jitter_pct: u32,
    seed: u32,
) -> u32 {
    // At most 15 doublings of less than 2^32: fits.
    let grown = (base_ms as i64) << doublings;
    let max = max_ms as i64;
    // min(grown, max) by the sign of their difference.
    let over = grown - max;
    let wait = (max + (over & (over >> 63))) as u64;
    let extra =
        (wait.wrapping_mul(jitter_pct as u64) / 100).wrapping_mul(spread(seed) as u64) >> 32;
    wait.wrapping_add(extra) as u32
}

/// How long after a probe of `w` (HALF_OPEN, probed every `interval_ms`) the next
/// one is due: with growth configured (`max_open_duration_ms` above
/// `open_duration_ms`), the interval doubled at each failed recovery attempt
/// since the breaker last closed (failed probes and trials: its reopens), at most
/// `max_open_duration_ms` (or the interval, if longer), plus up to
/// `open_jitter_pct` percent, chosen per attempt. Without growth, the interval.
/// Daemon-only (the probe scheduler and `status`): branches are fine.
pub const fn probe_interval_ms(w: BreakerWord, interval_ms: u32, t: &Thresholds) -> u32 {
    if t.max_open_duration_ms <= t.open_duration_ms {
        return interval_ms;
    }
    let max = if t.max_open_duration_ms > interval_ms {
        t.max_open_duration_ms
    } else {
        interval_ms
    };
    // Seeded per attempt: the HALF_OPEN phase's start and the attempts so far.
    let seed = w.since_ms() ^ w.reopens().rotate_right(4);
    grown_wait_ms(interval_ms, w.reopens(), max, t.open_jitter_pct, seed)
}

/// A well-mixed 32-bit value of `x` (murmur3's finaliser): nearby trip times give
/// unrelated jitter.
#[inline(always)]
const fn spread(x: u32) -> u32 {
    let mut h = x;
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^= h >> 16;
    h
}

/// OPEN for at least its open time ([`open_duration_ms`]) moves to HALF_OPEN;
/// anything else is unchanged.
#[inline(always)]
pub fn expire_open(w: BreakerWord, now_ms: u32, t: &Thresholds) -> BreakerWord {
    if w.mode() == Mode::Auto
        && w.state() == State::Open
        && w.phase_ms(now_ms) >= open_duration_ms(w, t)
    {
        w.half_opened(now_ms)
    } else {
        w
    }
}

/// HALF_OPEN whose trial slots have all been taken, the newest longer ago than the
/// lease, starts a new epoch: those trials are lost (their socket was never closed, or their end
/// was missed), and nothing else would ever free the slots.
#[inline(always)]
fn renew_lost_trials(w: BreakerWord, now_ms: u32, t: &Thresholds) -> BreakerWord {
    if w.state() == State::HalfOpen
        && t.half_open_max_connections > 0
        && w.in_flight() >= t.half_open_max_connections
        && w.phase_ms(now_ms) >= t.trial_lease_ms
    {
        w.half_opened(now_ms)
    } else {
        w
    }
}

/// A new connect to the upstream: pass, trial or reject. `now_ms` is not read while
/// CLOSED, so callers may skip the clock on that path.
#[inline(always)]
pub fn admit(w: BreakerWord, now_ms: u32, t: &Thresholds) -> Step<Admission> {
    let forced = match w.mode() {
        Mode::Auto => None,
        Mode::ForceOpen => Some(Admission::Reject),
        Mode::ForceClosed => Some(Admission::Pass),
        Mode::Disabled => Some(Admission::Ignore),
    };
    if let Some(result) = forced {
        return Step { next: w, result };
    }
    let w = renew_lost_trials(expire_open(w, now_ms, t), now_ms, t);
    match w.state() {
        State::Closed => Step {
            next: w,
            result: Admission::Pass,
        },
        State::Open => Step {
            next: w,
            result: Admission::Reject,
        },
        State::HalfOpen => {
            if w.in_flight() < t.half_open_max_connections {
                // The phase clock restarts at each admission, so the lease counts
                // from the newest trial, not from an idle HALF_OPEN's start.
                Step {
                    next: BreakerWord::pack(
                        State::HalfOpen,
                        now_ms,
                        w.count(),
                        w.in_flight() + 1,
                        w.epoch(),
                    ),
                    result: Admission::Trial { epoch: w.epoch() },
                }
            } else {
                Step {
                    next: w,
                    result: Admission::Reject,
                }
            }
        }
    }
}

/// The end of a watched connect. Returns whether it counted (it does not when it
/// belongs to an earlier phase, e.g. a connect in flight when the breaker tripped).
/// `now_ms` is read only for a failure, which may trip the breaker at that time.
#[inline(always)]
pub fn record(w: BreakerWord, outcome: Outcome, now_ms: u32, t: &Thresholds) -> Step<bool> {
    // Forced closed still reports every outcome; no override lets one move the state.
    match w.mode() {
        Mode::Auto => {}
        mode => {
            return Step {
                next: w,
                result: mode == Mode::ForceClosed,
            }
        }
    }
    match w.state() {
        State::Closed => {
            let next = if outcome.success {
                w.with_count(0)
            } else if w.streak() + 1 >= t.failure_threshold {
                w.tripped(now_ms)
            } else {
                w.with_streak(w.streak() + 1)
            };
            Step { next, result: true }
        }
        // Connects admitted before the trip finish here; the breaker already decided.
        State::Open => Step {
            next: w,
            result: false,
        },
        State::HalfOpen => match outcome.trial_epoch {
            Some(epoch) if epoch == w.epoch() => {
                let next = if !outcome.success {
                    // A failed application trial reopens, for longer each time
                    // (see open_duration_ms).
                    w.tripped(now_ms)
                } else if w.streak() + 1 >= t.success_threshold {
                    w.closed()
                } else {
                    w.with_streak(w.streak() + 1)
                        .with_in_flight(w.in_flight().saturating_sub(1))
                };
                Step { next, result: true }
            }
            _ => Step {
                next: w,
                result: false,
            },
        },
    }
}

/// The failure-rate window of a CLOSED breaker in `epoch` reached its threshold at
/// `now_ms`: it trips, as the consecutive count would. Anything but automatic
/// CLOSED in that same epoch stays as it is (the window belongs to one closed
/// period; a reset or a recovery since starts another). Returns whether it tripped.
#[inline(always)]
pub fn trip_on_rate(w: BreakerWord, now_ms: u32, epoch: u8) -> Step<bool> {
    if w.mode() == Mode::Auto && w.state() == State::Closed && w.epoch() == epoch {
        Step {
            next: w.tripped(now_ms),
            result: true,
        }
    } else {
        Step {
            next: w,
            result: false,
        }
    }
}

/// [`record`], then [`trip_on_rate`] when `rate_trips` names the epoch whose
/// window, with this outcome added, reached its threshold: one step, so the
/// programs apply both with one compare-and-swap.
#[inline(always)]
pub fn record_rated(
    w: BreakerWord,
    outcome: Outcome,
    now_ms: u32,
    t: &Thresholds,
    rate_trips: Option<u8>,
) -> Step<bool> {
    let step = record(w, outcome, now_ms, t);
    match rate_trips {
        Some(epoch) => Step {
            next: trip_on_rate(step.next, now_ms, epoch).next,
            result: step.result,
        },
        None => step,
    }
}

/// A trial that ended without an outcome (its connect never reached the network,
/// or the application closed it first) gives its HALF_OPEN slot back. Returns
/// whether it still held one.
#[inline(always)]
pub fn abandon(w: BreakerWord, epoch: u8) -> Step<bool> {
    if w.mode() == Mode::Auto
        && w.state() == State::HalfOpen
        && w.epoch() == epoch
        && w.in_flight() > 0
    {
        Step {
            next: w.with_in_flight(w.in_flight() - 1),
            result: true,
        }
    } else {
        Step {
            next: w,
            result: false,
        }
    }
}

/// A daemon probe's result. A probe is only meaningful once the open time has passed:
/// the word moves to HALF_OPEN first, then the probe counts toward closing. A failed
/// probe keeps the breaker HALF_OPEN (probing goes on, [`probe_interval_ms`] apart)
/// rather than restarting `open_duration`; only a failed application trial reopens.
/// Either counts as a failed recovery attempt in the reopens, which grow the wait
/// before the next one.
#[inline(always)]
pub fn probe(w: BreakerWord, success: bool, now_ms: u32, t: &Thresholds) -> Step<bool> {
    if w.mode() != Mode::Auto {
        return Step {
            next: w,
            result: false,
        };
    }
    let w = expire_open(w, now_ms, t);
    match w.state() {
        State::HalfOpen => {
            let next = if !success {
                // Saturating at MAX_REOPENS, like `tripped`.
                let reopens = w.reopens() + 1;
                w.with_count((reopens - (reopens >> REOPENS_BITS)) << REOPENS_SHIFT)
            } else if w.streak() + 1 >= t.success_threshold {
                w.closed()
            } else {
                w.with_streak(w.streak() + 1)
            };
            Step { next, result: true }
        }
        _ => Step {
            next: w,
            result: false,
        },
    }
}

/// Storage of a breaker word that supports compare-and-swap: an `AtomicU64` in the
/// daemon (over the mmapped map) and in host tests; a map value pointer in the kernel,
/// where the bpf target's `core` has no CAS and the programs use the intrinsic.
pub trait WordCell {
    fn load(&self) -> u64;
    /// Stores `new` if the cell holds `current`; returns the value found otherwise.
    fn compare_exchange(&self, current: u64, new: u64) -> Result<u64, u64>;
}

#[cfg(not(target_arch = "bpf"))]
impl WordCell for core::sync::atomic::AtomicU64 {
    #[inline(always)]
    fn load(&self) -> u64 {
        self.load(core::sync::atomic::Ordering::Acquire)
    }
    #[inline(always)]
    fn compare_exchange(&self, current: u64, new: u64) -> Result<u64, u64> {
        use core::sync::atomic::Ordering;
        self.compare_exchange(current, new, Ordering::AcqRel, Ordering::Acquire)
    }
}

/// Applies `f` to the word in `cell` with compare-and-swap, retrying on contention.
/// Returns the word it replaced and the step taken, or `None` if every attempt
/// lost a race (the caller then counts a contention miss).
#[inline(always)]
pub fn update<T: Copy>(
    cell: &impl WordCell,
    f: impl FnMut(BreakerWord) -> Step<T>,
) -> Option<(BreakerWord, Step<T>)> {
    update_within::<CAS_RETRIES, T>(cell, f)
}

/// Compare-and-swap attempts on a breaker's word in the kernel, for every
/// update there (the daemon makes [`CAS_RETRIES`]). Each attempt calls the
/// step as a global function, which the verifier checks once (while the
/// state machine was inlined into each attempt, eight took the packet ingress
/// programs to 0.91 of 6.18's million steps). Past them an outcome is dropped
/// and an admission passes (fail open), each counted in `contention_misses`.
pub const KERNEL_CAS_RETRIES: usize = 3;

/// [`update`] with `RETRIES` compare-and-swap attempts.
#[inline(always)]
pub fn update_within<const RETRIES: usize, T: Copy>(
    cell: &impl WordCell,
    mut f: impl FnMut(BreakerWord) -> Step<T>,
) -> Option<(BreakerWord, Step<T>)> {
    let mut current = cell.load();
    for _ in 0..RETRIES {
        let prev = BreakerWord(current);
        let step = f(prev);
        if step.next == prev {
            return Some((prev, step));
        }
        match cell.compare_exchange(current, step.next.0) {
            Ok(_) => return Some((prev, step)),
            Err(actual) => current = actual,
        }
    }
    None
}

/// Whether a word counts as ejected for its service's cap: automatic and out of
/// CLOSED. An operator's override is outside the cap: `force_open` ejects
/// without counting (the operator decides), and `force_closed` or `disabled` on
/// an ejected endpoint gives its place back, since it takes connects again.
#[inline(always)]
pub fn ejected(w: BreakerWord) -> bool {
    w.mode() == Mode::Auto && w.state() != State::Closed
}

/// Compare-and-swap attempts on a service's ejection slot: few, as the verifier
/// walks each one inside every retry of the word's own (sock_ops and the packet
/// egress have no room for more). A reservation that loses them holds the trip
/// back (the next failure tries again); a give-back that loses them leaves a
/// place taken until the daemon's reconciliation (`recount_services`, every
/// second) frees it.
pub const EJECTION_RETRIES: usize = 2;

/// A `per_endpoint` service's count of its endpoints that are [`ejected`],
/// which its ejection cap bounds. Every step that ejects an endpoint reserves
/// one before its compare-and-swap (and gives it back if the swap loses); a
/// step that ends an ejection gives one back after its swap wins. So the count
/// is never below the endpoints ejected, and the cap holds under any
/// interleaving.
pub trait Ejections {
    /// Takes one if fewer than the cap are taken; false: the trip is held back.
    fn reserve(&self) -> bool;
    fn release(&self);
}

/// A breaker of no service: nothing to count.
pub struct Uncapped;

impl Ejections for Uncapped {
    #[inline(always)]
    fn reserve(&self) -> bool {
        true
    }
    #[inline(always)]
    fn release(&self) {}
}

/// A service's slot in `SERVICE_EJECTIONS`: its cap in the high half (how
/// many endpoints may be ejected at once; the daemon writes it), the count of
/// those ejected in the low half. One word, so one compare-and-swap checks the
/// cap and takes a place, and the kernel reads no policy for it.
#[inline(always)]
pub const fn ejection_slot(cap: u32, count: u32) -> u64 {
    (cap as u64) << 32 | count as u64
}

/// The (cap, count) of a service's slot.
#[inline(always)]
pub const fn ejection_parts(slot: u64) -> (u32, u32) {
    ((slot >> 32) as u32, slot as u32)
}

/// Takes one place from the slot in `cell` (see [`ejection_slot`]) while fewer
/// than its cap are taken. A slot without a cap (0: the daemon has not written
/// it yet) ejects freely: breaker never holds a failing endpoint shut for a
/// fault of its own. Contention past the retry bound holds the trip back: the
/// endpoint stays CLOSED, as under a full cap, so breaker never ejects more
/// than the cap to save itself a retry.
#[inline(always)]
pub fn reserve_ejection(cell: &impl WordCell) -> bool {
    let mut current = cell.load();
    for _ in 0..EJECTION_RETRIES {
        let (cap, count) = ejection_parts(current);
        if cap == 0 {
            return true;
        }
        if count >= cap {
            return false;
        }
        match cell.compare_exchange(current, current + 1) {
            Ok(_) => return true,
            Err(actual) => current = actual,
        }
    }
    false
}

/// Gives one place back to the slot in `cell` (never below zero).
#[inline(always)]
pub fn release_ejection(cell: &impl WordCell) {
    let mut current = cell.load();
    for _ in 0..EJECTION_RETRIES {
        if ejection_parts(current).1 == 0 {
            return;
        }
        match cell.compare_exchange(current, current - 1) {
            Ok(_) => return,
            Err(actual) => current = actual,
        }
    }
}

/// [`update`] for an endpoint of a service with an ejection cap (see
/// [`Ejections`]). A step that would eject the endpoint past the cap is not
/// applied: the word stays as it was (CLOSED), and the step's result is
/// returned as if it had been.
#[inline(always)]
pub fn update_capped<T: Copy>(
    cell: &impl WordCell,
    ejections: &impl Ejections,
    f: impl FnMut(BreakerWord) -> Step<T>,
) -> Option<(BreakerWord, Step<T>)> {
    update_capped_within::<CAS_RETRIES, T>(cell, ejections, f).map(|c| (c.prev, c.step))
}

/// Compare-and-swap attempts on the word of a service's endpoint in the kernel
/// (sock_ops, the packet egress, the flow expiry): the verifier walks the
/// slot's attempts inside each one (the step itself is a global function,
/// checked once), and each daemon start pays for it. A lost race past them
/// drops the outcome and is counted in `contention_misses`, as an uncapped
/// update's.
pub const CAPPED_CAS_RETRIES: usize = KERNEL_CAS_RETRIES;

/// What [`update_capped_within`] did: the word it found, the step taken from
/// it, and whether the step was held back (the slot refused a place: full, or
/// lost to contention; the caller tells them apart by reading the slot).
#[derive(Clone, Copy, Debug)]
pub struct CappedStep<T> {
    pub prev: BreakerWord,
    pub step: Step<T>,
    pub held: bool,
}

/// [`update_capped`] with `RETRIES` compare-and-swap attempts on the word.
#[inline(always)]
pub fn update_capped_within<const RETRIES: usize, T: Copy>(
    cell: &impl WordCell,
    ejections: &impl Ejections,
    mut f: impl FnMut(BreakerWord) -> Step<T>,
) -> Option<CappedStep<T>> {
    let mut current = cell.load();
    for _ in 0..RETRIES {
        let prev = BreakerWord(current);
        let step = f(prev);
        if step.next == prev {
            return Some(CappedStep {
                prev,
                step,
                held: false,
            });
        }
        let (before, after) = (ejected(prev), ejected(step.next));
        let ejects = !before && after;
        if ejects && !ejections.reserve() {
            return Some(CappedStep {
                prev,
                step: Step {
                    next: prev,
                    result: step.result,
                },
                held: true,
            });
        }
        match cell.compare_exchange(current, step.next.0) {
            Ok(_) => {
                if before && !after {
                    ejections.release();
                }
                return Some(CappedStep {
                    prev,
                    step,
                    held: false,
                });
            }
            Err(actual) => {
                if ejects {
                    ejections.release();
                }
                current = actual;
            }
        }
    }
    None
}

#[cfg(test)]
mod ejection_tests;
#[cfg(test)]
mod tests;
