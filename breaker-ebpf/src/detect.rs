//! sock_ops: the outcome of each watched connect, counted once, for the breaker the
//! connect hook recorded for the socket (not for whatever the destination looks
//! like by then).
//!
//! - TCP_CONNECT_CB: a socket with a watched record gets the STATE and RTO
//!   callbacks, only those this program needs, and only if not already on; a trial
//!   also gets its SYN retry budget.
//! - TIMEOUT_INIT: a trial's initial SYN RTO, so a trial into a blackhole fails
//!   within `trial_connect_timeout`; for any other watched connect, the upstream's
//!   `connect_timeout`, so its `timeout` outcome comes that long after the SYN.
//! - STATE_CB SYN_SENT -> ESTABLISHED is a success.
//! - STATE_CB SYN_SENT -> CLOSE is a failure only when the kernel ended the connect
//!   (an RST, a hard ICMP error, or its SYN retries ran out: it has purged the SYN,
//!   `packets_out` is 0). With the SYN still outstanding the application cancelled
//!   it (shutdown, connect(AF_UNSPEC)): abandoned, never a failure.
//! - RTO_CB in SYN_SENT is a timeout, about one RTO after the SYN rather than after
//!   the kernel's 127 s of retries. Not for a trial, which has a SYN budget of its
//!   own and ends at ESTABLISHED or when the kernel gives up, within the budget.
//!
//! The record, not the callback flags, remembers that the outcome was counted:
//! another sock_ops program may share the flags. Once counted, the record goes.
use aya_ebpf::{
    bindings::{
        BPF_SOCK_OPS_RTO_CB, BPF_SOCK_OPS_RTO_CB_FLAG, BPF_SOCK_OPS_STATE_CB,
        BPF_SOCK_OPS_STATE_CB_FLAG, BPF_SOCK_OPS_TCP_CONNECT_CB, BPF_SOCK_OPS_TIMEOUT_INIT,
        BPF_TCP_CLOSE, BPF_TCP_ESTABLISHED, BPF_TCP_SYN_SENT,
    },
    helpers::generated::{bpf_getsockopt, bpf_setsockopt},
    programs::SockOpsContext,
};
use breaker_common::{
    abi::{
        ignore_bit, DestKey, SocketRecord, CAUSE_ABANDONED, CAUSE_FAILURE_RATE,
        CAUSE_FAILURE_REFUSED, CAUSE_FAILURE_SLOW, CAUSE_FAILURE_TIMEOUT,
        CAUSE_FAILURE_UNREACHABLE, CAUSE_SLOW_RATE, CAUSE_SUCCESS, POLICY_COUNT_SLOW,
        POLICY_DRY_RUN, POLICY_IGNORE_TIMEOUT,
    },
    machine::{self, BreakerWord, Mode, Outcome, RatedOutcome, State, Step, CAS_RETRIES},
    window,
};

use crate::{
    atomic::cas_u64,
    breaker::{
        count, count_duration, count_extra, emit_capped, jiffies, now_ms, outcome_word,
        record_capped, Breaker, CAPPED_APPLIED, CAPPED_HELD, CAPPED_TRANSITION,
    },
    maps::{POLICIES, RATE_WINDOWS},
    record::{self, Found},
    release::count_abandoned,
};

const WATCH_FLAGS: u32 = BPF_SOCK_OPS_STATE_CB_FLAG | BPF_SOCK_OPS_RTO_CB_FLAG;
const SOL_TCP: i32 = 6;
const TCP_SYNCNT: i32 = 7;

pub fn try_sock_ops(ctx: &SockOpsContext) -> Result<(), i32> {
    match ctx.op() {
        BPF_SOCK_OPS_TCP_CONNECT_CB => watch(ctx),
        BPF_SOCK_OPS_TIMEOUT_INIT => initial_rto(ctx),
        BPF_SOCK_OPS_STATE_CB if ctx.arg(0) == BPF_TCP_SYN_SENT => match ctx.arg(1) {
            BPF_TCP_ESTABLISHED => finish(ctx, End::Outcome(CAUSE_SUCCESS)),
            BPF_TCP_CLOSE => finish(ctx, closed_while_connecting(ctx)),
            _ => Ok(()),
        },
        // SAFETY: the kernel hands sock_ops a valid context.
        BPF_SOCK_OPS_RTO_CB if unsafe { (*ctx.ops).state } == BPF_TCP_SYN_SENT => {
            finish(ctx, End::FirstTimeout)
        }
        _ => Ok(()),
    }
}

/// How a watched connect ended, as this callback sees it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum End {
    /// A success or a failure (by cause).
    Outcome(u32),
    /// A SYN retransmission timed out: a failure, except for a trial, which waits
    /// for the end of its own SYN budget.
    FirstTimeout,
    /// The application cancelled the connect.
    Abandoned,
}

/// SYN_SENT -> CLOSE: who ended it.
#[inline(always)]
fn closed_while_connecting(ctx: &SockOpsContext) -> End {
    // SAFETY: the kernel hands sock_ops a valid context.
    let (packets_out, retrans, segs_in) = unsafe {
        (
            (*ctx.ops).packets_out,
            (*ctx.ops).total_retrans,
            (*ctx.ops).segs_in,
        )
    };
    if packets_out > 0 {
        End::Abandoned
    } else if segs_in > 0 {
        // The peer's RST came back, after retransmitted SYNs or not.
        End::Outcome(CAUSE_FAILURE_REFUSED)
    } else if retrans > 0 {
        // The SYN was retransmitted and the kernel gave up on it.
        End::Outcome(CAUSE_FAILURE_TIMEOUT)
    } else {
        // Ended with nothing back: a hard ICMP error (measured in
        // EBPF-TOOLCHAIN.md: segs_in 0, packets_out 0, no retransmission).
        End::Outcome(CAUSE_FAILURE_UNREACHABLE)
    }
}

/// Turns on the callbacks a watched connect needs.
#[inline(always)]
fn watch(ctx: &SockOpsContext) -> Result<(), i32> {
    let Some(found) = record::read(record::cookie(ctx)) else {
        return Ok(());
    };
    if !found.is_open() {
        return Ok(());
    }
    let current = ctx.cb_flags();
    let missing = WATCH_FLAGS & !current;
    // SAFETY: this socket's live record; sock_ops runs under the socket lock.
    unsafe { (*found.slot).cb_flags_set = missing };
    if missing != 0 {
        ctx.set_cb_flags((current | missing) as i32)?;
    }
    if found.trial_epoch().is_some() {
        let retries = POLICIES
            .get(found.record.upstream)
            .map_or(0, |p| p.trial_syn_retries);
        if retries > 0 {
            set_tcp_option(ctx, TCP_SYNCNT, retries as i32);
        }
    }
    Ok(())
}

/// A watched connect's initial SYN RTO: a trial's, or the upstream's
/// `connect_timeout`. Asked again at each SYN retransmission (to judge when the
/// connect has timed out), so it answers until the outcome is counted; after that
/// (no record) the kernel's own judgement applies to the SYNs left.
#[inline(always)]
fn initial_rto(ctx: &SockOpsContext) -> Result<(), i32> {
    // Only sockets this program watches: skip the lookup otherwise.
    if ctx.cb_flags() & BPF_SOCK_OPS_RTO_CB_FLAG == 0 {
        return Ok(());
    }
    let Some(found) = record::read(record::cookie(ctx)) else {
        return Ok(());
    };
    if !found.is_open() {
        return Ok(());
    }
    if let Some(p) = POLICIES.get(found.record.upstream) {
        let jiffies = if found.trial_epoch().is_some() {
            p.trial_rto_jiffies
        } else {
            p.connect_rto_jiffies
        };
        if jiffies > 0 {
            ctx.set_reply(jiffies);
        }
    }
    Ok(())
}

/// Turns off the callbacks this program turned on, and only those.
#[inline(always)]
fn stop_watching(ctx: &SockOpsContext, r: &SocketRecord) {
    if r.cb_flags_set != 0 {
        let _ = ctx.set_cb_flags((ctx.cb_flags() & !r.cb_flags_set) as i32);
    }
}

/// Counts the watched connect's end once, on the breaker its record names.
#[inline(always)]
fn finish(ctx: &SockOpsContext, end: End) -> Result<(), i32> {
    let Some(found) = record::read(record::cookie(ctx)) else {
        return Ok(());
    };
    if !found.is_open() {
        // Ended already (abandoned, or counted).
        if end == End::FirstTimeout {
            // A timeout counted while its breaker let connects through waits here,
            // at each SYN retransmission, for the breaker to turn connects away;
            // one being failed waits for its end.
            if !found.aborting() && !kernel_gives_up(ctx) {
                abort_if_turned_away(ctx, &found);
            }
            return Ok(());
        }
        if found.aborting() {
            aborted(ctx, &found, end);
        }
        stop_watching(ctx, &found.record);
        found.free();
        return Ok(());
    }
    let trial_epoch = found.trial_epoch();
    let cause = match end {
        End::FirstTimeout if trial_epoch.is_some() => return Ok(()),
        End::FirstTimeout => CAUSE_FAILURE_TIMEOUT,
        End::Outcome(cause) => cause,
        End::Abandoned => {
            stop_watching(ctx, &found.record);
            if found.claim_end() {
                count_abandoned(&found);
            }
            found.free();
            return Ok(());
        }
    };
    if !found.claim_end() {
        stop_watching(ctx, &found.record);
        return Ok(());
    }
    let r = &found.record;
    conclude(r.upstream, &r.dest, cause, trial_epoch, r.started_jiffies);
    // A connect whose SYN went unanswered for `connect_timeout`, while its breaker
    // turns connects away (this timeout may have tripped it), is failed now; while
    // it lets them through, the connect keeps its record and callbacks, and is
    // judged again at each retransmission, if the breaker could ever turn it away.
    if end == End::FirstTimeout
        && !kernel_gives_up(ctx)
        && (abort_if_turned_away(ctx, &found) || may_turn_away(r.upstream))
    {
        return Ok(());
    }
    stop_watching(ctx, r);
    found.free();
    Ok(())
}

/// RTO_CB's third argument: the kernel has judged the connect timed out and is
/// failing it itself.
#[inline(always)]
fn kernel_gives_up(ctx: &SockOpsContext) -> bool {
    ctx.arg(2) != 0
}

/// TCP_USER_TIMEOUT, in ms. A connect whose SYN was already retransmitted has
/// been waiting longer than 1 ms: the kernel clamps the retransmission timer it
/// arms next to the time left (none) and then fails the connect with ETIMEDOUT.
const TCP_USER_TIMEOUT: i32 = 18;
const ABORT_USER_TIMEOUT_MS: i32 = 1;

/// Fails the connect of `ctx` (in SYN_SENT, its SYN unanswered for
/// `connect_timeout`) if the breaker its record names turns connects away: no
/// application waits on a dead upstream once its breaker has tripped. The socket's
/// own `TCP_USER_TIMEOUT` is kept in the record, marked aborting, and given back
/// at the socket's next state change: the SYN the kernel sends along with this
/// timeout may get through after all, and the socket may connect again. STATE_CB
/// is turned on if another program had it off, so that change is seen. Returns
/// whether it did. Never for a dry-run upstream, which changes nothing, nor when
/// the socket's own timeout cannot be read back (kernels before 6.1).
#[inline(never)]
fn abort_if_turned_away(ctx: &SockOpsContext, found: &Found) -> bool {
    let r = &found.record;
    let Some(breaker) = Breaker::of_record(r.upstream, &r.dest, false) else {
        return false;
    };
    if breaker.policy.flags & POLICY_DRY_RUN != 0 || !machine::turns_away(breaker.peek()) {
        return false;
    }
    let Some(own) = user_timeout(ctx) else {
        return false;
    };
    // From here the slot cannot change hands until the mark is undone or freed.
    if !found.mark_aborting() {
        return false;
    }
    let flags = ctx.cb_flags();
    let missing = BPF_SOCK_OPS_STATE_CB_FLAG & !flags;
    if (missing != 0 && ctx.set_cb_flags((flags | missing) as i32).is_err())
        || !set_tcp_option(ctx, TCP_USER_TIMEOUT, ABORT_USER_TIMEOUT_MS)
    {
        found.unmark_aborting();
        return false;
    }
    // SAFETY: this socket's record, marked aborting by the compare-and-swap
    // above: no other connect takes the slot, and sock_ops runs under the
    // socket lock.
    unsafe {
        (*found.slot).epoch = own;
        (*found.slot).cb_flags_set = r.cb_flags_set | missing;
    }
    true
}

/// The end of a connect being failed, whatever it is: its own `TCP_USER_TIMEOUT`
/// back (it may go on, or connect again); counted as aborted when the kernel
/// failed it, as raced when its last SYN got through.
#[inline(never)]
fn aborted(ctx: &SockOpsContext, found: &Found, end: End) {
    set_tcp_option(ctx, TCP_USER_TIMEOUT, found.record.epoch as i32);
    let upstream = found.record.upstream;
    match end {
        End::Outcome(CAUSE_FAILURE_TIMEOUT) => count_extra(upstream, |c| c.aborted += 1),
        End::Outcome(CAUSE_SUCCESS) => count_extra(upstream, |c| c.abort_raced += 1),
        _ => {}
    }
}

/// The socket's `TCP_USER_TIMEOUT`, in ms.
#[inline(always)]
fn user_timeout(ctx: &SockOpsContext) -> Option<u32> {
    let mut value: i32 = 0;
    // SAFETY: a sock_ops context of a locked op (RTO_CB) and a pointer to an int
    // of the given size.
    let got = unsafe {
        bpf_getsockopt(
            ctx.ops.cast(),
            SOL_TCP,
            TCP_USER_TIMEOUT,
            core::ptr::from_mut(&mut value).cast(),
            core::mem::size_of::<i32>() as i32,
        )
    };
    (got == 0 && value >= 0).then_some(value as u32)
}

/// Sets the SOL_TCP option `name` of the socket to `value` (from sock_ops ops
/// that hold the socket lock: TCP_CONNECT_CB, RTO_CB, STATE_CB); whether the
/// kernel took it.
#[inline(always)]
fn set_tcp_option(ctx: &SockOpsContext, name: i32, value: i32) -> bool {
    let mut value = value;
    // SAFETY: a sock_ops context of a locked op and a pointer to an int of the
    // given size.
    let set = unsafe {
        bpf_setsockopt(
            ctx.ops.cast(),
            SOL_TCP,
            name,
            core::ptr::from_mut(&mut value).cast(),
            core::mem::size_of::<i32>() as i32,
        )
    };
    set == 0
}

/// Whether upstream `upstream`'s breaker can ever turn away a connect that timed
/// out: not in dry run, and its `count` counts timeouts (otherwise a blackhole
/// never opens it, and the record would wait for nothing).
#[inline(always)]
fn may_turn_away(upstream: u32) -> bool {
    POLICIES
        .get(upstream)
        .is_some_and(|p| p.flags & (POLICY_DRY_RUN | POLICY_IGNORE_TIMEOUT) == 0)
}

/// Counts one watched connect's outcome (`CAUSE_SUCCESS` or a failure cause) and
/// applies it to the breaker `upstream` names (for the default policy, `dest`'s):
/// the one conclusion of every hook that sees outcomes (sock_ops, the packet path).
/// An outcome of a service's endpoint goes through the service's ejection cap
/// (`record_capped`).
#[inline(always)]
pub fn conclude(
    upstream: u32,
    dest: &DestKey,
    cause: u32,
    trial_epoch: Option<u8>,
    started_jiffies: u64,
) {
    let verdict = if cause == CAUSE_SUCCESS {
        time_success(upstream, started_jiffies)
    } else {
        0
    };
    let slow = verdict & SUCCESS_SLOW != 0;
    let cause = if verdict & SUCCESS_SLOW_COUNTS != 0 {
        CAUSE_FAILURE_SLOW
    } else {
        cause
    };
    count(upstream, |c| match cause {
        CAUSE_SUCCESS | CAUSE_FAILURE_SLOW => c.successes += 1,
        CAUSE_FAILURE_TIMEOUT => c.failures_timeout += 1,
        CAUSE_FAILURE_UNREACHABLE => c.failures_unreachable += 1,
        _ => c.failures_refused += 1,
    });
    let success = cause == CAUSE_SUCCESS;
    // A failure the upstream's `count` leaves out moves nothing: a trial gives
    // its HALF_OPEN slot back, as if abandoned.
    if !success && uncounted(upstream, cause) {
        if let (Some(epoch), Some(breaker)) =
            (trial_epoch, Breaker::of_record(upstream, dest, false))
        {
            breaker.update(CAUSE_ABANDONED, |w| machine::abandon(w, epoch));
        }
        return;
    }
    // Only a failure creates a default-policy breaker: healthy destinations stay out
    // of the LRU map.
    let Some(breaker) = Breaker::of_record(upstream, dest, !success) else {
        return;
    };
    // The word as the outcome found it, read only for an upstream with a window:
    // the CLOSED path of every other upstream pays nothing for it.
    // A per-destination breaker keeps none: the window is its upstream's.
    let (rate, rate_epoch) =
        if breaker.policy.keeps_window() && breaker.dest.is_none() && trial_epoch.is_none() {
            let before = breaker.peek();
            (
                rate_window(upstream, before.0, u32::from(!success), u32::from(slow)),
                before.epoch(),
            )
        } else {
            (0, 0)
        };
    let cause = if rate & RATE_NAMES_TRIP != 0 {
        CAUSE_FAILURE_RATE
    } else if rate & SLOW_NAMES_TRIP != 0 {
        CAUSE_SLOW_RATE
    } else {
        cause
    };
    let rate_trips = (rate & RATE_TRIPS != 0).then_some(rate_epoch);
    // Only what may trip the breaker reads the clock (it trips at `now`).
    let now = if success && rate_trips.is_none() {
        0
    } else {
        now_ms()
    };
    let bits = RatedOutcome {
        outcome: Outcome {
            success,
            trial_epoch,
        },
        rate_trips,
    }
    .pack();
    if breaker.dest.is_none() && breaker.policy.service != 0 {
        // An endpoint of a service: through the service's ejection cap.
        let done = record_capped(upstream, bits, now);
        if done & CAPPED_HELD != 0 {
            count_extra(upstream, |c| c.ejection_overflow += 1);
        }
        if done & CAPPED_TRANSITION != 0 {
            emit_capped(upstream, done, cause);
        } else if done & CAPPED_APPLIED == 0 {
            breaker.count(|c| c.contention_misses += 1);
        }
        return;
    }
    breaker.update(cause, |w| Step {
        next: BreakerWord(outcome_word(w.0, breaker.upstream, bits, now)),
        result: (),
    });
}

/// [`time_success`]'s verdict: the connect was slow...
const SUCCESS_SLOW: u32 = 1;
/// ...and the upstream's `count` names "slow": it counts as a failure.
const SUCCESS_SLOW_COUNTS: u32 = 2;

/// Adds a successful connect's time to its upstream's histogram and says whether
/// it was slow (the `SUCCESS_` bits), counting it if so. Out of line and on
/// scalars, like [`rate_window`].
#[inline(never)]
#[unsafe(no_mangle)]
pub extern "C" fn time_success(upstream: u32, started_jiffies: u64) -> u32 {
    let ticks = count_duration(upstream, started_jiffies);
    let Some(p) = POLICIES.get(upstream) else {
        return 0;
    };
    if !p.is_slow(ticks) {
        return 0;
    }
    count_extra(upstream, |c| c.slow += 1);
    if p.flags & POLICY_COUNT_SLOW != 0 {
        SUCCESS_SLOW | SUCCESS_SLOW_COUNTS
    } else {
        SUCCESS_SLOW
    }
}

/// Whether upstream `upstream`'s `count` leaves out failures of `cause`.
#[inline(always)]
fn uncounted(upstream: u32, cause: u32) -> bool {
    POLICIES
        .get(upstream)
        .is_some_and(|p| p.flags & ignore_bit(cause) != 0)
}

/// [`rate_window`]'s verdict: the window reached its threshold: the breaker trips...
const RATE_TRIPS: u32 = 1;
/// ...and the consecutive count would not have tripped it anyway (the transition
/// is the failure rate's)...
const RATE_NAMES_TRIP: u32 = 2;
/// ...or it is the slow rate's.
const SLOW_NAMES_TRIP: u32 = 4;

/// Adds one outcome of a configured upstream to its windows (failures, slow
/// connects: whichever it keeps), if the breaker was CLOSED (the windows count no
/// trials, nothing while open), in the breaker's epoch (a new closed period counts
/// afresh), and says what follows (the `RATE_` bits). `before` is the word as the
/// outcome found it; `failure` and `slow` are 0 or 1. A global function, on
/// scalars (see `breaker::outcome_word`), with a small frame: sock_ops' own is
/// near the verifier's 512 bytes.
#[inline(never)]
#[unsafe(no_mangle)]
pub extern "C" fn rate_window(upstream: u32, before: u64, failure: u32, slow: u32) -> u32 {
    let before = BreakerWord(before);
    let (failure, slow) = (failure != 0, slow != 0);
    if before.state() != State::Closed || before.mode() != Mode::Auto {
        return 0;
    }
    let Some(p) = POLICIES.get(upstream) else {
        return 0;
    };
    let Some(w) = RATE_WINDOWS.get_ptr_mut(upstream) else {
        return 0;
    };
    let slot = window::slot_of(jiffies(), p.rate_bucket_jiffies);
    let epoch = before.epoch();
    // Whether the consecutive count trips the breaker with this outcome anyway.
    let streak_trips = failure && before.streak() + 1 >= p.failure_threshold;
    let mut verdict = 0;
    if p.rate_threshold_pct != 0 {
        // SAFETY: `w` is a live map value; only a field's address is taken.
        let ring = unsafe { core::ptr::addr_of_mut!((*w).buckets).cast::<u64>() };
        if !add_to_window(ring, slot, epoch, failure) {
            count(upstream, |c| c.contention_misses += 1);
        } else if failure
            && window_exceeded(ring, slot, epoch, p.rate_threshold_pct, p.rate_minimum)
        {
            verdict = if streak_trips {
                RATE_TRIPS
            } else {
                RATE_TRIPS | RATE_NAMES_TRIP
            };
        }
    }
    if p.slow_rate_pct != 0 {
        // SAFETY: as above.
        let ring = unsafe { core::ptr::addr_of_mut!((*w).slow).cast::<u64>() };
        if !add_to_window(ring, slot, epoch, slow) {
            count(upstream, |c| c.contention_misses += 1);
        } else if slow
            && verdict == 0
            && window_exceeded(ring, slot, epoch, p.slow_rate_pct, p.rate_minimum)
        {
            verdict = if streak_trips {
                RATE_TRIPS
            } else {
                RATE_TRIPS | SLOW_NAMES_TRIP
            };
        }
    }
    verdict
}

/// Adds one outcome to the bucket of `slot` in a failure-rate window; false if
/// every compare-and-swap lost a race. Not inlined, like [`window_exceeded`]:
/// sock_ops' own stack frame is near the verifier's 512 bytes already.
#[inline(never)]
fn add_to_window(buckets: *mut u64, slot: u32, epoch: u8, failure: bool) -> bool {
    // The verifier does not follow `%`: hide the index from the compiler (which
    // would drop a check it knows is always true) and check it where it can see.
    let index = window::index_of(slot);
    // SAFETY: reads a local.
    let index = unsafe { core::ptr::read_volatile(&index) };
    if index >= window::BUCKETS {
        return false;
    }
    // SAFETY: index is below BUCKETS: inside the map value.
    let bucket = unsafe { buckets.add(index) };
    // SAFETY: `bucket` points into the map value, 8-aligned.
    let mut current = unsafe { core::ptr::read_volatile(bucket) };
    for _ in 0..CAS_RETRIES {
        let next = window::add(current, slot, epoch, failure);
        // SAFETY: as above.
        match unsafe { cas_u64(bucket, current, next) } {
            Ok(_) => return true,
            Err(actual) => current = actual,
        }
    }
    false
}

/// Whether the window ending at `slot`, in `epoch`, reaches `threshold_pct` with
/// `minimum` connects in it.
#[inline(never)]
fn window_exceeded(
    buckets: *mut u64,
    slot: u32,
    epoch: u8,
    threshold_pct: u32,
    minimum: u32,
) -> bool {
    let (mut attempts, mut failures) = (0u32, 0u32);
    let mut i = 0usize;
    while i < window::BUCKETS {
        // Through memory, so the compiler keeps this a loop (an unrolled one spills
        // each bucket to the stack) and the verifier sees the bound checked.
        // SAFETY: reads a local.
        let index = unsafe { core::ptr::read_volatile(&i) };
        if index >= window::BUCKETS {
            break;
        }
        // SAFETY: index is below BUCKETS, inside the map value; racing adds only
        // make the tally a little stale, never invalid.
        let b = window::Bucket::unpack(unsafe { core::ptr::read_volatile(buckets.add(index)) });
        if window::counts(b, slot, epoch) {
            attempts += b.attempts;
            failures += b.failures;
        }
        i = index + 1;
    }
    window::exceeded(attempts, failures, threshold_pct, minimum)
}
