//! Access to one breaker (configured upstream or default-policy destination): its word,
//! policy and counters, and the transition events it emits.
use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{bpf_ktime_get_ns, generated::bpf_jiffies64},
};
use aya_log_ebpf::debug;
use breaker_common::{
    abi::CAUSE_OPEN_EXPIRED,
    abi::{
        duration_bucket, BreakerCell, Counters, DestKey, ExtraCounters, TransitionEvent,
        UpstreamPolicy, DEFAULT_UPSTREAM_ID, POLICY_DRY_RUN, POLICY_PER_ADDRESS,
    },
    fallback::{self, HopUse},
    machine::{
        self, admit, Admission, BreakerWord, Ejections, Mode, RatedOutcome, State, Step, WordCell,
        CAPPED_CAS_RETRIES, KERNEL_CAS_RETRIES,
    },
};

use crate::{
    atomic::cas_u64,
    maps::{
        CONNECT_DURATIONS, COUNTERS, DAEMON_HEARTBEAT, DEFAULT_STATES, DEFAULT_TRIPPED, EVENTS,
        EXTRA_COUNTERS, POLICIES, SERVICE_EJECTIONS, UPSTREAM_STATES,
    },
};

/// One breaker, resolved from the maps.
pub struct Breaker {
    pub upstream: u32,
    /// Set for per-destination breakers (the default policy's, a per-address
    /// upstream's): the destination they guard.
    pub dest: Option<DestKey>,
    /// A per-destination breaker kept in `DEFAULT_TRIPPED` (safe from eviction).
    tripped: bool,
    pub policy: &'static UpstreamPolicy,
    word: *mut u64,
}

/// A breaker word in a map value, changed with the BPF atomic cmpxchg instruction.
struct KernelWord(*mut u64);

impl WordCell for KernelWord {
    #[inline(always)]
    fn load(&self) -> u64 {
        // SAFETY: the pointer came from a map lookup and stays valid for this run.
        unsafe { core::ptr::read_volatile(self.0) }
    }
    #[inline(always)]
    fn compare_exchange(&self, current: u64, new: u64) -> Result<u64, u64> {
        // SAFETY: as in `load`; map values are 8-byte aligned.
        unsafe { cas_u64(self.0, current, new) }
    }
}

/// `record_capped`'s answer: the outcome was applied (the word updated, or a
/// trip held back by a full cap)...
pub const CAPPED_APPLIED: u32 = 1 << 0;
/// ...and changed state, from the state in bits 8-15 to the one in bits 16-23.
pub const CAPPED_TRANSITION: u32 = 1 << 1;
/// The cap held a trip back (the caller counts it in `ejection_overflow`).
pub const CAPPED_HELD: u32 = 1 << 2;

/// A connect's outcome (`machine::record_rated`, from `RatedOutcome::pack` bits and
/// `now`) applied to upstream `upstream`, an endpoint of a `per_endpoint`
/// service, through the service's ejection cap
/// (`machine::update_capped_within::<CAPPED_CAS_RETRIES>`).
/// Out of line, on scalars, with a small frame: the verifier walks the cap once
/// per call rather than on every path through the caller, and sock_ops' and
/// the packet egress' stacks have room for little more. Returns the
/// `CAPPED_` bits; without `CAPPED_APPLIED`: contention, nothing applied. The
/// caller reports a transition and counts a trip held back.
#[inline(never)]
#[unsafe(no_mangle)]
pub extern "C" fn record_capped(upstream: u32, bits: u32, now: u32) -> u32 {
    let (Some(policy), Some(word)) = (
        POLICIES.get(upstream).filter(|p| p.is_configured()),
        UPSTREAM_STATES.get_ptr_mut(upstream),
    ) else {
        return 0;
    };
    let cap = ServiceCap {
        slot: SERVICE_EJECTIONS
            .get_ptr_mut(policy.service)
            .unwrap_or(core::ptr::null_mut()),
    };
    let applied =
        machine::update_capped_within::<CAPPED_CAS_RETRIES, _>(&KernelWord(word), &cap, |w| Step {
            next: BreakerWord(outcome_word(w.0, upstream, bits, now)),
            result: (),
        });
    match applied {
        // Held back: by the cap when the slot is full, else by contention on
        // it (reported as not applied: the caller counts a contention miss).
        Some(c) if c.held => {
            // SAFETY: a map value pointer from the lookup above, or null.
            let full = !cap.slot.is_null() && {
                let (limit, taken) = machine::ejection_parts(unsafe { *cap.slot });
                limit != 0 && taken >= limit
            };
            if full {
                CAPPED_APPLIED | CAPPED_HELD
            } else {
                0
            }
        }
        Some(c) => match c.step.transition(c.prev) {
            Some((from, to)) => {
                CAPPED_APPLIED | CAPPED_TRANSITION | from.as_u32() << 8 | to.as_u32() << 16
            }
            None => CAPPED_APPLIED,
        },
        None => 0,
    }
}

/// The word after one outcome (`machine::record_rated`, from `RatedOutcome::pack`
/// bits and `now`) under upstream `policy`'s thresholds; `word` itself if the
/// policy cannot be read. A global function, on scalars: the verifier checks
/// the state machine here once, for any word, instead of once per
/// compare-and-swap attempt on every path into each caller.
#[inline(never)]
#[unsafe(no_mangle)]
pub extern "C" fn outcome_word(word: u64, policy: u32, bits: u32, now: u32) -> u64 {
    let Some(p) = POLICIES.get(policy) else {
        return word;
    };
    let r = RatedOutcome::unpack(bits);
    machine::record_rated(
        BreakerWord(word),
        r.outcome,
        now,
        &p.thresholds(),
        r.rate_trips,
    )
    .next
    .0
}

/// `machine::admit` of `word` at `now` under upstream `policy`'s thresholds
/// (as while no daemon probes, if `away`), or `None` if the policy cannot be
/// read.
#[inline(always)]
fn admit_step(word: u64, policy: u32, now: u32, away: u32) -> Option<Step<Admission>> {
    let p = POLICIES.get(policy)?;
    let thresholds = if away != 0 {
        p.thresholds().without_daemon()
    } else {
        p.thresholds()
    };
    Some(admit(BreakerWord(word), now, &thresholds))
}

/// The word after admitting a connect ([`admit_step`]); `word` itself if the
/// policy cannot be read. A global function, on scalars, like [`outcome_word`].
#[inline(never)]
#[unsafe(no_mangle)]
pub extern "C" fn admit_word(word: u64, policy: u32, now: u32, away: u32) -> u64 {
    admit_step(word, policy, now, away).map_or(word, |s| s.next.0)
}

/// The admission beside [`admit_word`]'s word, packed
/// (`Admission::pack`); a pass if the policy cannot be read (fail open).
#[inline(never)]
#[unsafe(no_mangle)]
pub extern "C" fn admission_of(word: u64, policy: u32, now: u32, away: u32) -> u32 {
    admit_step(word, policy, now, away)
        .map_or(Admission::Pass, |s| s.result)
        .pack()
}

/// Logs a transition from the kernel (aya-log, at debug level; the daemon logs
/// it from its event too). A global function, on scalars: the verifier walks
/// the log record's encoding once, not on every path through each breaker
/// update (inline there, it took 6.1's walk of the packet egress from under
/// 0.1 to 0.86 million steps).
#[inline(never)]
#[unsafe(no_mangle)]
pub extern "C" fn log_transition(upstream: u32, from: u32, to: u32, cause: u32) -> u32 {
    // aya-log reads nothing from the context its macros take.
    debug!(
        &(),
        "upstream {} state {} -> {} (cause {})", upstream, from, to, cause
    );
    0
}

/// Reports a transition `record_capped` made (the `CAPPED_` bits in `done`)
/// of configured upstream `upstream`. Out of line, so that the event is not in
/// its caller's frame (see `record_capped`).
#[inline(never)]
#[unsafe(no_mangle)]
pub extern "C" fn emit_capped(upstream: u32, done: u32, cause: u32) -> u32 {
    let event = TransitionEvent {
        at_ns: now_ns(),
        upstream,
        from: (done >> 8) & 0xff,
        to: (done >> 16) & 0xff,
        cause,
        dest: DestKey::default(),
        _pad: 0,
    };
    // A full ring only loses the event; the state itself is in the map.
    let _ = EVENTS.output::<TransitionEvent>(&event, 0);
    0
}

/// The ejection count of the service an endpoint belongs to, looked up once
/// before the compare-and-swap loop (a helper call inside it would make every
/// value live across it spill to the stack, which has no room).
struct ServiceCap {
    /// The service's slot (`machine::ejection_slot`: its cap and count). Null:
    /// the service has none, and the endpoint ejects freely (breaker never
    /// holds a failing endpoint shut for a fault of its own).
    slot: *mut u64,
}

impl Ejections for ServiceCap {
    #[inline(always)]
    fn reserve(&self) -> bool {
        self.slot.is_null() || machine::reserve_ejection(&KernelWord(self.slot))
    }
    #[inline(always)]
    fn release(&self) {
        if !self.slot.is_null() {
            machine::release_ejection(&KernelWord(self.slot));
        }
    }
}

#[inline(always)]
pub fn now_ns() -> u64 {
    // SAFETY: a helper without arguments.
    unsafe { bpf_ktime_get_ns() }
}

/// The kernel's tick counter: the JIT inlines it as one memory read, where a clock
/// read costs about 100 ns on a paravirtualised guest. For timestamps on the
/// connect path, which need no more than tick resolution.
#[inline(always)]
pub fn jiffies() -> u64 {
    // SAFETY: a helper without arguments (kernel 5.5+).
    unsafe { bpf_jiffies64() }
}

#[inline(always)]
pub fn now_ms() -> u32 {
    (now_ns() / 1_000_000) as u32
}

/// Bumps upstream `upstream`'s counters on this CPU.
#[inline(always)]
pub fn count(upstream: u32, f: impl FnOnce(&mut Counters)) {
    if let Some(c) = COUNTERS.get_ptr_mut(upstream) {
        // SAFETY: this CPU's slot; no other writer while this program runs.
        f(unsafe { &mut *c });
    }
}

/// Adds a successful connect that started at `started_jiffies` to upstream
/// `upstream`'s histogram on this CPU; returns how long it took, in ticks.
#[inline(always)]
pub fn count_duration(upstream: u32, started_jiffies: u64) -> u64 {
    let ticks = jiffies().wrapping_sub(started_jiffies);
    if let Some(d) = CONNECT_DURATIONS.get_ptr_mut(upstream) {
        // SAFETY: this CPU's slot; no other writer while this program runs.
        let d = unsafe { &mut *d };
        if let Some(b) = d.buckets.get_mut(duration_bucket(ticks)) {
            *b += 1;
        }
        d.sum_ticks = d.sum_ticks.wrapping_add(ticks);
    }
    ticks
}

/// Bumps upstream `upstream`'s extra counters on this CPU.
#[inline(always)]
pub fn count_extra(upstream: u32, f: impl FnOnce(&mut ExtraCounters)) {
    if let Some(c) = EXTRA_COUNTERS.get_ptr_mut(upstream) {
        // SAFETY: this CPU's slot; no other writer while this program runs.
        f(unsafe { &mut *c });
    }
}

/// What a fallback hop naming upstream `upstream` does with a rejected connect,
/// by that upstream's breaker word (read, never written). An id with no breaker
/// takes it unwatched: breaker never fails a connect it cannot judge.
#[inline(always)]
pub fn hop_use(upstream: u32) -> HopUse {
    let (Some(policy), Some(word)) = (
        POLICIES.get(upstream).filter(|p| p.is_configured()),
        UPSTREAM_STATES.get(upstream),
    ) else {
        return HopUse::Go;
    };
    fallback::hop_use(BreakerWord(*word), policy.flags & POLICY_DRY_RUN != 0)
}

/// Whether the daemon's heartbeat is stale (or the map unreadable: then no daemon
/// can be relied on to probe either).
#[inline(always)]
fn daemon_away(now: u32) -> bool {
    let beat = DAEMON_HEARTBEAT.get(0).map_or(0, |b| *b as u32);
    machine::daemon_away(beat, now)
}

impl Breaker {
    /// The per-destination breaker of `dest` under upstream `upstream`'s policy
    /// (the default policy's, or a `per_endpoint` upstream's over CIDR or
    /// any-port endpoints); created CLOSED if `create` and absent (only a
    /// failure creates one).
    #[inline(always)]
    fn for_destination(
        upstream: u32,
        policy: &'static UpstreamPolicy,
        dest: &DestKey,
        create: bool,
    ) -> Option<Self> {
        let (cell, tripped) = match DEFAULT_TRIPPED.get_ptr_mut(dest) {
            Some(cell) => (cell, true),
            None => (Self::untripped_cell(dest, create)?, false),
        };
        // SAFETY: `cell` is a live map value; only the field's address is taken.
        let word = unsafe { core::ptr::addr_of_mut!((*cell).word) };
        Some(Breaker {
            upstream,
            dest: Some(*dest),
            tripped,
            policy,
            word,
        })
    }

    /// `dest`'s cell in `DEFAULT_STATES`, created CLOSED if `create` and absent.
    #[inline(always)]
    fn untripped_cell(dest: &DestKey, create: bool) -> Option<*mut BreakerCell> {
        let cell = match DEFAULT_STATES.get_ptr_mut(dest) {
            Some(cell) => cell,
            None if create => {
                // Another CPU may insert first; NOEXIST keeps its word.
                let _ = DEFAULT_STATES.insert(dest, BreakerCell { word: 0 }, BPF_NOEXIST as u64);
                DEFAULT_STATES.get_ptr_mut(dest)?
            }
            None => return None,
        };
        Some(cell)
    }

    /// A default-policy breaker that just tripped moves to `DEFAULT_TRIPPED`, out of
    /// the LRU's reach; one that just closed leaves it. When `DEFAULT_TRIPPED` is
    /// full, a trip stays in the LRU map (and may be evicted).
    #[inline(always)]
    fn relocate(&self, to: State, word: BreakerWord) {
        let Some(dest) = &self.dest else {
            return;
        };
        if to == State::Open && !self.tripped {
            let cell = BreakerCell { word: word.0 };
            if DEFAULT_TRIPPED
                .insert(dest, cell, BPF_NOEXIST as u64)
                .is_ok()
            {
                let _ = DEFAULT_STATES.remove(dest);
            }
        } else if to == State::Closed && self.tripped {
            let _ = DEFAULT_TRIPPED.remove(dest);
        }
    }

    /// The breaker a socket record names: a configured upstream's, or the
    /// record's destination's own under the default policy or a per-address
    /// upstream (`POLICY_PER_ADDRESS`). A per-address upstream under an
    /// operator's override is judged by its own word, the override's, for every
    /// address. `create`: make a destination's breaker that is not there yet.
    #[inline(always)]
    pub fn of_record(upstream: u32, dest: &DestKey, create: bool) -> Option<Self> {
        let policy = POLICIES.get(upstream).filter(|p| p.is_configured())?;
        if Self::per_destination(upstream, policy) {
            return Self::for_destination(upstream, policy, dest, create);
        }
        let word = UPSTREAM_STATES.get_ptr_mut(upstream)?;
        Some(Breaker {
            upstream,
            dest: None,
            tripped: false,
            policy,
            word,
        })
    }

    /// Whether upstream `upstream`'s connects are judged by a breaker per
    /// destination, made at a destination's first failure: the default
    /// policy's, or a per-address upstream's in auto. When [`Breaker::of_record`]
    /// finds none, such a connect is watched under `upstream` all the same.
    #[inline(always)]
    pub fn unfailed(upstream: u32) -> bool {
        POLICIES
            .get(upstream)
            .filter(|p| p.is_configured())
            .is_some_and(|p| Self::per_destination(upstream, p))
    }

    #[inline(always)]
    fn per_destination(upstream: u32, policy: &UpstreamPolicy) -> bool {
        upstream == DEFAULT_UPSTREAM_ID
            || (policy.flags & POLICY_PER_ADDRESS != 0
                && UPSTREAM_STATES
                    .get(upstream)
                    .is_none_or(|w| BreakerWord(*w).mode() == Mode::Auto))
    }

    /// The word as it is now, for a decision made before [`Breaker::update`]
    /// (which may see a newer one).
    #[inline(always)]
    pub fn peek(&self) -> BreakerWord {
        BreakerWord(KernelWord(self.word).load())
    }

    /// Whether a new connect may go: the one admission of every hook (connect4/6
    /// and the packet path). Contention beyond the retry bound passes: fail open.
    #[inline(always)]
    pub fn admit(&self) -> Admission {
        // CLOSED, the common case, admits and changes nothing (`machine::admit`):
        // no clock, no compare-and-swap.
        let peek = self.peek();
        if peek.state() == State::Closed && peek.mode() == Mode::Auto {
            return Admission::Pass;
        }
        // The clock and the daemon's heartbeat are read once, here, outside the
        // compare-and-swap loop: a map lookup inside it would be retried with it.
        let now = now_ms();
        let away = u32::from(daemon_away(now));
        // Two pure functions of the same word, clock and policy (`POLICIES` is
        // written before the programs are attached and never after), so the
        // word applied and the admission answered are one step's.
        self.update(CAUSE_OPEN_EXPIRED, |w| Step {
            next: BreakerWord(admit_word(w.0, self.upstream, now, away)),
            result: admission_of(w.0, self.upstream, now, away),
        })
        .map_or(Admission::Pass, Admission::unpack)
    }

    /// Applies one state-machine step with compare-and-swap and reports any
    /// transition. Not for an outcome of a service's endpoint, which may eject
    /// it or end its ejection: that goes through [`record_capped`]. Admissions
    /// and abandoned trials never do (`machine::ejected` is the same before and
    /// after; a property test holds them to it).
    #[inline(always)]
    pub fn update<T: Copy>(&self, cause: u32, f: impl FnMut(BreakerWord) -> Step<T>) -> Option<T> {
        let applied = machine::update_within::<KERNEL_CAS_RETRIES, T>(&KernelWord(self.word), f);
        match applied {
            Some((prev, step)) => {
                if let Some((from, to)) = step.transition(prev) {
                    self.relocate(to, step.next);
                    self.emit(from, to, cause);
                    log_transition(self.upstream, from.as_u32(), to.as_u32(), cause);
                }
                Some(step.result)
            }
            None => {
                self.count(|c| c.contention_misses += 1);
                None
            }
        }
    }

    #[inline(always)]
    pub fn count(&self, f: impl FnOnce(&mut Counters)) {
        count(self.upstream, f)
    }

    #[inline(always)]
    fn emit(&self, from: State, to: State, cause: u32) {
        let event = TransitionEvent {
            at_ns: now_ns(),
            upstream: self.upstream,
            from: from.as_u32(),
            to: to.as_u32(),
            cause,
            dest: self.dest.unwrap_or_default(),
            _pad: 0,
        };
        // A full ring only loses the event; the state itself is in the map.
        let _ = EVENTS.output::<TransitionEvent>(&event, 0);
    }
}
