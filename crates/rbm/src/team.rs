//! A fork-join team for the training loops: the caller plus `threads − 1` helper threads that
//! stay awake (spinning, then yielding) between the many short parallel steps of a mini-batch.
//!
//! Why not rayon there: a mini-batch is a handful of parallel steps of 0.1–1 ms each, and on a
//! virtual machine waking a sleeping rayon worker (or the caller blocked in a join) costs
//! 25–100 µs per step (`rayon::join` of two 50 µs tasks took 77 µs here; with one side 100 µs
//! longer, 243 µs instead of 150: `cargo bench -p rbm --bench kernels -- fork-join`). Members
//! that spin, then yield, while they wait answer in microseconds; they park after 5 ms without
//! work. A member that finds it was descheduled for a whole time slice while waiting (another
//! thread wants its core) parks instead, and from then on the whole team parks after a short
//! spin, as rayon does, so a busy machine costs it about what it costs rayon.
//!
//! Results never depend on which thread runs which item: callers give every item its own
//! inputs and outputs, exactly as with rayon.
//!
//! Every parallel step inside an epoch belongs on the team: a rayon call there would have its
//! workers share the cores with the team's waiting helpers (the rating RBM's conditional, Adam
//! and factored epochs ran 13–25 % slower that way).
//!
//! A team also keeps the time its steps take per phase ([`Team::timed`], [`Team::take_times`]):
//! the wall time, and how long the first member to finish waited for the last, which no
//! profiler shows directly (both members are "busy" in a sampling profile while one spins).
//!
//! A team takes its size from the caller's rayon pool and owns those cores while it runs: to
//! train several models at once, run each in its own small pool (`ThreadPoolBuilder::new()
//! .num_threads(1).build()?.install(..)`), or the teams' spinning helpers crowd the cores.

use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// A waiting member spins this long, then yields (an idle core hands it straight back, so it
/// still answers within microseconds) until [`PARK_AFTER`], then parks.
const SPIN: Duration = Duration::from_micros(500);
const PARK_AFTER: Duration = Duration::from_millis(5);
/// Once the team has seen contention it spins only this long before parking, as rayon does.
const SPIN_CONTENDED: Duration = Duration::from_micros(20);
/// A pause this long between two looks at the clock while waiting means the member was
/// descheduled for a whole time slice: another thread wants its core, and spinning or yielding
/// would starve it (next to a process that keeps a core busy, a team that kept spinning and
/// yielding trained 5–20× slower). Shorter pauses happen on a quiet virtual machine too.
const PREEMPTED: Duration = Duration::from_millis(2);
/// A parked member looks again after this long even if nobody woke it (a safety net only).
const PARK_TIMEOUT: Duration = Duration::from_millis(2);
/// The caller waiting this long for the others after its own part of a step means a member
/// lost its core for a while (on a quiet or merely busy machine this happened in 14 of 7,443
/// steps; with another process spinning on a member's core, in nearly every step).
const LATE_STEP: Duration = Duration::from_millis(1);
/// After this many late steps, each within [`LATE_WINDOW`] of the one before, the caller runs
/// every member's part itself for [`SOLO_FOR`] (see [`Team::run`]). Alone, late steps are
/// noise: on the busy host they came ~0.1 per ML-100K epoch, and counted over a whole run
/// they sent it solo about once every 100 epochs.
const LATE_STEPS_BEFORE_SOLO: usize = 3;
const LATE_WINDOW: Duration = Duration::from_millis(20);
/// How long the caller then stays alone before trying the team again: each try costs up to
/// [`LATE_STEPS_BEFORE_SOLO`] late steps when the other core is still busy, and alone the
/// caller runs at most at half speed when it is not.
const SOLO_FOR: Duration = Duration::from_millis(100);

/// A task for every member: `f(member)` with `member` in `0..threads`.
type Task = dyn Fn(usize) + Sync;

struct Shared {
    /// The current task, lifetime erased (see [`Team::run`] for why that is sound).
    task: Mutex<Option<&'static Task>>,
    /// Bumped once per task; helpers start a task when they see a new value.
    generation: AtomicUsize,
    /// Helpers that have finished the current task.
    done: AtomicUsize,
    /// Helpers that are parked (the caller unparks them).
    parked: AtomicUsize,
    /// The caller, parked while it waits for the helpers (the last helper to finish unparks
    /// it).
    caller: Mutex<Option<std::thread::Thread>>,
    caller_parked: AtomicBool,
    panicked: AtomicBool,
    quit: AtomicBool,
    /// Set once any member was descheduled while spinning: from then on members park soon.
    contended: AtomicBool,
    /// Helpers in the team (threads − 1).
    helpers_total: usize,
}

/// Items a parallel step hands out held on the stack (more go to the heap).
pub const STACK_SLOTS: usize = 32;

/// The items of one parallel step, each taken exactly once by whichever member claims it.
struct Slots<T> {
    stack: [Mutex<Option<T>>; STACK_SLOTS],
    more: Vec<Mutex<Option<T>>>,
    len: usize,
}

impl<T> Slots<T> {
    fn new(items: impl IntoIterator<Item = T>) -> Self {
        let mut it = items.into_iter().fuse();
        let mut len = 0;
        let stack = std::array::from_fn(|_| {
            let item = it.next();
            len += usize::from(item.is_some());
            Mutex::new(item)
        });
        // Empty (and so not allocated) unless there are more than STACK_SLOTS items.
        let more: Vec<_> = it.map(|t| Mutex::new(Some(t))).collect();
        len += more.len();
        Slots { stack, more, len }
    }

    fn take(&self, i: usize) -> Option<T> {
        let slot = match i.checked_sub(STACK_SLOTS) {
            None => &self.stack[i],
            Some(j) => self.more.get(j)?,
        };
        slot.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

/// A member's unclaimed run of items, `front..back`, in one word (a step's items are held
/// in memory, so far fewer than 2³²).
pub(crate) fn pack(front: usize, back: usize) -> u64 {
    debug_assert!(front <= back && back <= u32::MAX as usize);
    ((front as u64) << 32) | back as u64
}

/// The run `(front, back)` packed by [`pack`].
pub(crate) fn unpack(word: u64) -> (usize, usize) {
    ((word >> 32) as usize, (word & 0xFFFF_FFFF) as usize)
}

/// Claims an item of a run atomically: `pick(front, back)` gives the item and the new run,
/// or nothing to claim.
pub(crate) fn claim<I>(
    run: &AtomicU64,
    pick: impl Fn(usize, usize) -> Option<(I, (usize, usize))>,
) -> Option<I> {
    let mut cur = run.load(Ordering::Acquire);
    loop {
        let (front, back) = unpack(cur);
        let (item, (f, b)) = pick(front, back)?;
        match run.compare_exchange_weak(cur, pack(f, b), Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => return Some(item),
            Err(now) => cur = now,
        }
    }
}

/// Phases a team keeps times for ([`Team::timed`]).
pub const PHASES: usize = 4;

/// What the steps timed under one phase cost (see [`Team::timed`]), summed.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct StepTimes {
    /// Calls timed.
    pub calls: u64,
    /// Their wall time on the caller, seconds.
    pub seconds: f64,
    /// Time the first member to finish a parallel step waited for the last, summed over
    /// steps, seconds (0 with one thread): what an even split would save.
    pub spread_seconds: f64,
}

/// One phase's running sums, in nanoseconds.
#[derive(Default)]
struct Tally {
    calls: AtomicU64,
    wall: AtomicU64,
    spread: AtomicU64,
}

/// The team of a parallel training run (see the module doc). Get one from [`with_team`].
pub struct Team<'a> {
    shared: &'a Shared,
    threads: usize,
    helpers: Vec<std::thread::Thread>,
    /// Per member, the unclaimed part of its own items in the current static step: the first
    /// and one past the last, packed as `front << 32 | back` (see [`Self::for_each_static_and`]).
    claims: Vec<AtomicU64>,
    /// Whether members that are done take items a late member has not started, and the caller
    /// takes over every part after late steps (tests turn both off to check where items run).
    steal: AtomicBool,
    /// The phase being timed ([`Team::timed`]), or [`PHASES`] for none.
    phase: AtomicUsize,
    tallies: [Tally; PHASES],
    /// Per member, when it finished the current step (nanoseconds after the step began).
    finished: Vec<AtomicU64>,
    /// Late steps in a row (see [`LATE_STEPS_BEFORE_SOLO`]), and when the last one ended
    /// (nanoseconds after `born`).
    late_steps: AtomicUsize,
    last_late: AtomicU64,
    /// Until when (nanoseconds after `born`) the caller runs every member's part itself (see
    /// [`Team::run`]); 0 when it does not.
    solo_until: AtomicU64,
    born: Instant,
}

/// A pool of `threads` threads, for tests that check results do not depend on the count.
#[cfg(test)]
pub(crate) fn test_pool(threads: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("a thread pool")
}

/// The team size for a training run: the caller's rayon pool decides (as `--threads` and
/// `pool.install` always did), but never more members than the cores this process may use —
/// a member without a core stalls every step it takes part in (measured: 3 members on 2 cores
/// made an epoch 2–5× slower). Results do not depend on the team size.
pub fn training_threads() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    rayon::current_num_threads().clamp(1, cores)
}

/// Runs `body` with a team of `threads` threads (the caller and `threads − 1` helpers, which
/// stop when `body` returns). With one thread there are no helpers and everything runs here.
pub fn with_team<R>(threads: usize, body: impl FnOnce(&Team<'_>) -> R) -> R {
    let threads = threads.max(1);
    let shared = Shared {
        task: Mutex::new(None),
        generation: AtomicUsize::new(0),
        done: AtomicUsize::new(0),
        parked: AtomicUsize::new(0),
        caller: Mutex::new(None),
        caller_parked: AtomicBool::new(false),
        panicked: AtomicBool::new(false),
        quit: AtomicBool::new(false),
        contended: AtomicBool::new(false),
        helpers_total: threads - 1,
    };
    // Where the caller runs now: each helper starts by moving to another core (see `placement`).
    let caller_cpu = placement::current_cpu();
    std::thread::scope(|s| {
        let helpers = (1..threads)
            .map(|member| {
                let shared = &shared;
                s.spawn(move || {
                    if let Some(cpu) = caller_cpu {
                        placement::spread(cpu, member - 1);
                    }
                    helper(shared, member)
                })
                .thread()
                .clone()
            })
            .collect();
        let team = Team {
            shared: &shared,
            threads,
            helpers,
            claims: (0..threads).map(|_| AtomicU64::new(0)).collect(),
            steal: AtomicBool::new(true),
            phase: AtomicUsize::new(PHASES),
            tallies: Default::default(),
            finished: (0..threads).map(|_| AtomicU64::new(0)).collect(),
            late_steps: AtomicUsize::new(0),
            last_late: AtomicU64::new(0),
            solo_until: AtomicU64::new(0),
            born: Instant::now(),
        };
        // Stop the helpers however `body` ends (a panic included), or the scope would wait.
        struct Stop<'t, 'a>(&'t Team<'a>);
        impl Drop for Stop<'_, '_> {
            fn drop(&mut self) {
                self.0.shared.quit.store(true, Ordering::Release);
                for t in &self.0.helpers {
                    t.unpark();
                }
            }
        }
        let stop = Stop(&team);
        body(stop.0)
    })
}

/// Where a new team's threads start. Linux starts a new thread on its parent's core and moves
/// it when it sees fit: on this 2-vCPU VM, in 5 of 61 fresh processes, a training run's
/// helper stayed on the caller's core for its first steps. The two members then took turns on
/// one core, the caller waited ~1 ms for the helper in each step, and after three such steps
/// the team went solo (see [`Team::run`]) for 100 ms: the first seven ML-100K epochs ran at
/// one thread's speed (12–16 ms instead of 5–6). So each helper first moves itself off the
/// caller's core, once.
#[cfg(target_os = "linux")]
mod placement {
    use std::mem::{size_of, zeroed};

    /// The core the calling thread runs on now (None if the system does not say).
    pub(super) fn current_cpu() -> Option<usize> {
        // SAFETY: no arguments; returns a core number or −1.
        let cpu = unsafe { libc::sched_getcpu() };
        usize::try_from(cpu).ok()
    }

    /// Moves the calling thread to the `nth` (cyclically) of the cores it may use other than
    /// `avoid`, then lets it run on all the cores it could before, so the scheduler stays free
    /// to move it later: a one-time spread, not pinning. Returns the core it ran on while
    /// bound to the target (None when there is no other core or the system refused; the
    /// thread then stays where it is).
    pub(super) fn spread(avoid: usize, nth: usize) -> Option<usize> {
        let size = size_of::<libc::cpu_set_t>();
        // SAFETY: `cpu_set_t` is plain data (all zeros is the empty set); the calls get its
        // size and a valid pointer, and CPU_ISSET / CPU_SET take cores below CPU_SETSIZE.
        unsafe {
            let mut allowed: libc::cpu_set_t = zeroed();
            if libc::sched_getaffinity(0, size, &mut allowed) != 0 {
                return None;
            }
            let others: Vec<usize> = (0..libc::CPU_SETSIZE as usize)
                .filter(|&c| c != avoid && libc::CPU_ISSET(c, &allowed))
                .collect();
            let target = *others.get(nth % others.len().max(1))?;
            let mut one: libc::cpu_set_t = zeroed();
            libc::CPU_SET(target, &mut one);
            // The kernel has moved the calling thread when this returns.
            if libc::sched_setaffinity(0, size, &one) != 0 {
                return None;
            }
            let landed = current_cpu();
            libc::sched_setaffinity(0, size, &allowed);
            landed
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        /// The cores this thread may use.
        fn allowed() -> Vec<usize> {
            // SAFETY: as in `spread`.
            unsafe {
                let mut set: libc::cpu_set_t = zeroed();
                assert_eq!(
                    libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut set),
                    0
                );
                (0..libc::CPU_SETSIZE as usize)
                    .filter(|&c| libc::CPU_ISSET(c, &set))
                    .collect()
            }
        }

        #[test]
        fn spread_runs_the_thread_on_another_core_then_frees_it() {
            std::thread::spawn(|| {
                let before = allowed();
                let here = current_cpu().expect("Linux reports the current core");
                assert!(before.contains(&here));
                let others: Vec<usize> = before.iter().copied().filter(|&c| c != here).collect();
                for nth in 0..3 {
                    let landed = spread(here, nth);
                    if others.is_empty() {
                        assert_eq!(landed, None, "nowhere else to go");
                    } else {
                        // While bound, the thread can only have run on its target.
                        assert_eq!(landed, Some(others[nth % others.len()]));
                    }
                    // And afterwards it may run anywhere it could before.
                    assert_eq!(allowed(), before);
                }
            })
            .join()
            .unwrap();
        }
    }
}

/// Elsewhere threads stay where the system puts them.
#[cfg(not(target_os = "linux"))]
mod placement {
    pub(super) fn current_cpu() -> Option<usize> {
        None
    }

    pub(super) fn spread(_avoid: usize, _nth: usize) -> Option<usize> {
        None
    }
}

/// The spinning phase of one wait (see [`SPIN`], [`PREEMPTED`]).
struct Spin {
    start: Instant,
    last: Instant,
    /// The team had seen contention when this wait began: spin briefly, never yield.
    contended: bool,
    spins: u32,
}

impl Spin {
    fn new(shared: &Shared) -> Self {
        let now = Instant::now();
        Spin {
            start: now,
            last: now,
            contended: shared.contended.load(Ordering::Relaxed),
            spins: 0,
        }
    }

    /// Waits a little (true), or says it is time to park (false).
    #[inline]
    fn go_on(&mut self, shared: &Shared) -> bool {
        self.spins = self.spins.wrapping_add(1);
        if !self.spins.is_multiple_of(64) {
            std::hint::spin_loop();
            return true;
        }
        let now = Instant::now();
        if now - self.last > PREEMPTED {
            shared.contended.store(true, Ordering::Relaxed);
            return false;
        }
        self.last = now;
        let waited = now - self.start;
        if waited < if self.contended { SPIN_CONTENDED } else { SPIN } {
            std::hint::spin_loop();
            true
        } else if !self.contended && waited < PARK_AFTER {
            std::thread::yield_now();
            true
        } else {
            false
        }
    }
}

fn helper(shared: &Shared, member: usize) {
    let mut seen = 0;
    loop {
        let mut spin = Spin::new(shared);
        loop {
            if shared.quit.load(Ordering::Acquire) {
                return;
            }
            let g = shared.generation.load(Ordering::Acquire);
            if g != seen {
                seen = g;
                break;
            }
            if spin.go_on(shared) {
                continue;
            }
            // SeqCst on both sides (announce, then re-check; publish, then look), so either
            // this re-check sees the new task or the caller sees this helper parked.
            shared.parked.fetch_add(1, Ordering::SeqCst);
            if shared.generation.load(Ordering::SeqCst) == seen
                && !shared.quit.load(Ordering::SeqCst)
            {
                std::thread::park_timeout(PARK_TIMEOUT);
            }
            shared.parked.fetch_sub(1, Ordering::SeqCst);
            spin = Spin::new(shared);
        }
        let task = *shared.task.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(task) = task
            && catch_unwind(AssertUnwindSafe(|| task(member))).is_err()
        {
            shared.panicked.store(true, Ordering::Release);
        }
        // The last helper to finish wakes the caller if it has parked (SeqCst: see `run`).
        let finished = shared.done.fetch_add(1, Ordering::SeqCst) + 1;
        if shared.caller_parked.load(Ordering::SeqCst)
            && finished == shared.helpers_total
            && let Some(caller) = shared
                .caller
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_ref()
        {
            caller.unpark();
        }
    }
}

impl Team<'_> {
    /// Threads in the team, the caller included.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Forgets any contention seen so far (see the module doc): for a team that lives across
    /// several epochs, so a busy moment between them (validation on rayon's threads, say)
    /// does not leave the rest of the run in the slower parking mode.
    pub fn forget_contention(&self) {
        self.shared.contended.store(false, Ordering::Relaxed);
    }

    /// Counts a step in which the caller waited for the others (see [`Self::run`]).
    fn late_step(&self) {
        let now = self.born.elapsed();
        let last = Duration::from_nanos(
            self.last_late
                .swap(now.as_nanos() as u64, Ordering::Relaxed),
        );
        let in_a_row = if now - last <= LATE_WINDOW {
            self.late_steps.fetch_add(1, Ordering::Relaxed) + 1
        } else {
            self.late_steps.store(1, Ordering::Relaxed);
            1
        };
        if in_a_row >= LATE_STEPS_BEFORE_SOLO {
            let until = (now + SOLO_FOR).as_nanos() as u64;
            self.solo_until.store(until.max(1), Ordering::Relaxed);
        }
    }

    /// Whether the caller runs every member's part itself now (see [`Self::run`]); leaves
    /// that mode once its time is up.
    pub fn solo(&self) -> bool {
        let until = self.solo_until.load(Ordering::Relaxed);
        if until == 0 {
            return false;
        }
        if (self.born.elapsed().as_nanos() as u64) < until {
            return true;
        }
        self.solo_until.store(0, Ordering::Relaxed);
        self.late_steps.store(0, Ordering::Relaxed);
        false
    }

    /// Runs `f` (the caller's part of a phase: one or more parallel steps) and adds its wall
    /// time, and the spread of its parallel steps, to phase `phase` (below [`PHASES`]; nested
    /// calls are timed under the innermost phase).
    pub fn timed<R>(&self, phase: usize, f: impl FnOnce() -> R) -> R {
        assert!(phase < PHASES, "phase {phase} out of range");
        let outer = self.phase.swap(phase, Ordering::Relaxed);
        let start = Instant::now();
        let r = f();
        let t = &self.tallies[phase];
        t.wall
            .fetch_add(start.elapsed().as_nanos() as u64, Ordering::Relaxed);
        t.calls.fetch_add(1, Ordering::Relaxed);
        self.phase.store(outer, Ordering::Relaxed);
        r
    }

    /// The times summed per phase since the last call (see [`Self::timed`]), and resets them.
    pub fn take_times(&self) -> [StepTimes; PHASES] {
        std::array::from_fn(|p| {
            let t = &self.tallies[p];
            StepTimes {
                calls: t.calls.swap(0, Ordering::Relaxed),
                seconds: t.wall.swap(0, Ordering::Relaxed) as f64 * 1e-9,
                spread_seconds: t.spread.swap(0, Ordering::Relaxed) as f64 * 1e-9,
            }
        })
    }

    /// Runs `f(member)` once on every member (0 on the caller) and returns when all are done.
    ///
    /// Once the caller has waited 1 ms or more for the others in three steps close together
    /// (each within 20 ms of the last), it runs `f(0)`, `f(1)`, … itself, in turn, for 100 ms,
    /// then tries the team again: a member whose core another process keeps busy gets it only
    /// now and then, and every step waited for it (with two processes spinning on one of two
    /// cores, a two-thread ML-100K epoch took 58–65 ms against 10–14 ms on one thread; now
    /// 16–18 ms). Results do not depend on which thread runs a part, and the parts never wait
    /// for a later member's, so this changes nothing but the time.
    pub fn run<'f>(&self, f: &'f (dyn Fn(usize) + Sync + 'f)) {
        if self.threads == 1 {
            f(0);
            return;
        }
        if self.solo() {
            (0..self.threads).for_each(f);
            return;
        }
        // With a phase being timed, each member notes when it finished (stored before its
        // `done` increment, so the caller reads them after the wait below).
        let phase = self.phase.load(Ordering::Relaxed);
        let start = Instant::now();
        let noted = |member: usize| {
            f(member);
            if phase < PHASES {
                let ns = start.elapsed().as_nanos() as u64;
                self.finished[member].store(ns, Ordering::Relaxed);
            }
        };
        let f: &(dyn Fn(usize) + Sync) = &noted;
        // SAFETY: the reference is only used by helpers between the generation bump below and
        // their `done` increment, and this function does not return (nor unwind: the caller's
        // own part is caught) before every helper has incremented `done`; so `f` (and what it
        // borrows) outlives every use despite the erased lifetime.
        let erased = unsafe { std::mem::transmute::<&(dyn Fn(usize) + Sync), &'static Task>(f) };
        *self.shared.task.lock().unwrap_or_else(|e| e.into_inner()) = Some(erased);
        self.shared.done.store(0, Ordering::Release);
        self.shared.generation.fetch_add(1, Ordering::SeqCst);
        if self.shared.parked.load(Ordering::SeqCst) > 0 {
            for t in &self.helpers {
                t.unpark();
            }
        }
        let mine = catch_unwind(AssertUnwindSafe(|| f(0)));
        let mine_done = Instant::now();
        let helpers = self.shared.helpers_total;
        let mut spin = Spin::new(self.shared);
        while self.shared.done.load(Ordering::Acquire) < helpers {
            if spin.go_on(self.shared) {
                continue;
            }
            // Announce, then re-check (the helpers count, then look: SeqCst on both sides), so
            // either this re-check sees them done or the last one sees this thread parked.
            let me = &self.shared;
            *me.caller.lock().unwrap_or_else(|e| e.into_inner()) = Some(std::thread::current());
            me.caller_parked.store(true, Ordering::SeqCst);
            if me.done.load(Ordering::SeqCst) < helpers {
                std::thread::park_timeout(PARK_TIMEOUT);
            }
            me.caller_parked.store(false, Ordering::SeqCst);
            spin = Spin::new(me);
        }
        *self.shared.task.lock().unwrap_or_else(|e| e.into_inner()) = None;
        if mine_done.elapsed() >= LATE_STEP && self.steal.load(Ordering::Relaxed) {
            self.late_step();
        }
        if phase < PHASES && mine.is_ok() {
            let ends = self.finished.iter().map(|t| t.load(Ordering::Relaxed));
            let (first, last) = ends.fold((u64::MAX, 0), |(a, b), t| (a.min(t), b.max(t)));
            self.tallies[phase]
                .spread
                .fetch_add(last.saturating_sub(first), Ordering::Relaxed);
        }
        if let Err(p) = mine {
            resume_unwind(p);
        }
        if self.shared.panicked.swap(false, Ordering::AcqRel) {
            panic!("a task of the training team panicked");
        }
    }

    /// Calls `f` on every item, the members taking items in order as they become free (so
    /// uneven items balance out). Runs here, in order, with one thread or one item. Up to
    /// [`STACK_SLOTS`] items are held on the stack, so a training step allocates nothing.
    pub fn for_each<T: Send>(&self, items: impl IntoIterator<Item = T>, f: impl Fn(T) + Sync) {
        if self.threads == 1 {
            items.into_iter().for_each(f);
            return;
        }
        let slots = Slots::new(items);
        if slots.len <= 1 {
            slots.take(0).into_iter().for_each(f);
            return;
        }
        let next = AtomicUsize::new(0);
        self.run(&|_| {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= slots.len {
                    break;
                }
                if let Some(item) = slots.take(i) {
                    f(item);
                }
            }
        });
    }

    /// Calls `f` on every item, item `i` of `n` on member `i · threads / n` (contiguous runs
    /// of items per member, the same every call, so each member keeps working on the same data
    /// in its own caches), except that a member done with its own run takes items from the
    /// end of a late member's run while that member has at least two not yet started (see
    /// [`Self::for_each_static_and`]). Allocates nothing for up to [`STACK_SLOTS`] items.
    pub fn for_each_static<T: Send>(
        &self,
        items: impl IntoIterator<Item = T>,
        f: impl Fn(T) + Sync,
    ) {
        self.for_each_static_and(items, f, || {}, &|_| {});
    }

    /// [`Self::for_each_static`], and `extra` once, on the first member to finish its own items,
    /// after them (here, after the items, with one thread or at most one item): a serial job
    /// that needs none of the items' results rides on a member that would otherwise wait for
    /// the others, instead of holding up the whole team afterwards. Then `idle(member)` on
    /// every member once it has no items left to take (not with one thread or at most one
    /// item): for items that let a member that is done take over part of an item still
    /// running (the caller's items and `idle` share that protocol). Allocates nothing for up
    /// to [`STACK_SLOTS`] items.
    ///
    /// Members start their runs at the front; after its own run (and `extra`, if it got it) a
    /// member takes items from the back of the others' runs, but never a member's last item
    /// not yet started. On a quiet machine the runs end together and nothing moves (items
    /// taken as members came free, or any small imbalance moving a chunk's weights to the
    /// other core, cost 5 % on the Netflix-shaped epoch); when another process slows one core
    /// down, the other takes over that member's items instead of waiting for it.
    pub fn for_each_static_and<T: Send>(
        &self,
        items: impl IntoIterator<Item = T>,
        f: impl Fn(T) + Sync,
        extra: impl FnOnce() + Send,
        idle: &(dyn Fn(usize) + Sync),
    ) {
        if self.threads == 1 {
            items.into_iter().for_each(f);
            extra();
            return;
        }
        let slots = Slots::new(items);
        let n = slots.len;
        if n <= 1 {
            slots.take(0).into_iter().for_each(f);
            extra();
            return;
        }
        let t = self.threads;
        // Member m's run: the items i with i·t/n == m. Published to the helpers by `run`.
        for (m, c) in self.claims.iter().enumerate() {
            c.store(
                pack((m * n).div_ceil(t), ((m + 1) * n).div_ceil(t)),
                Ordering::Relaxed,
            );
        }
        let steal = self.steal.load(Ordering::Relaxed);
        let extra = Mutex::new(Some(extra));
        self.run(&|member| {
            let run = |i: usize| {
                if let Some(item) = slots.take(i) {
                    f(item);
                }
            };
            while let Some(i) = claim(&self.claims[member], |front, back| {
                (front < back).then_some((front, (front + 1, back)))
            }) {
                run(i);
            }
            // Taken (and the lock let go) before it runs, so a member that comes later finds
            // nothing and goes on at once.
            let job = extra.lock().unwrap_or_else(|e| e.into_inner()).take();
            if let Some(extra) = job {
                extra();
            }
            if steal {
                for other in (1..t).map(|d| (member + d) % t) {
                    while let Some(i) = claim(&self.claims[other], |front, back| {
                        (back >= front + 2).then_some((back - 1, (front, back - 1)))
                    }) {
                        run(i);
                    }
                }
            }
            idle(member);
        });
    }

    /// Turns taking a late member's items (see [`Self::for_each_static_and`]) and solo mode
    /// (see [`Self::run`]) on or off.
    #[cfg(test)]
    fn set_stealing(&self, on: bool) {
        self.steal.store(on, Ordering::Relaxed);
    }

    /// Runs `a` and `b`, on two members when there are two.
    pub fn join(&self, a: impl FnOnce() + Send, b: impl FnOnce() + Send) {
        if self.threads == 1 {
            a();
            b();
            return;
        }
        let (a, b) = (Mutex::new(Some(a)), Mutex::new(Some(b)));
        self.run(&|member| match member {
            0 => {
                if let Some(a) = a.lock().unwrap_or_else(|e| e.into_inner()).take() {
                    a()
                }
            }
            1 => {
                if let Some(b) = b.lock().unwrap_or_else(|e| e.into_inner()).take() {
                    b()
                }
            }
            _ => {}
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_item_runs_once_on_any_team_size() {
        for threads in [1, 2, 3, 5] {
            with_team(threads, |team| {
                assert_eq!(team.threads(), threads);
                for round in 0..200usize {
                    // Some rounds with more items than the stack holds.
                    let n = if round % 50 == 49 {
                        3 * STACK_SLOTS + 1
                    } else {
                        round % 17
                    };
                    let hits: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
                    team.for_each(0..n, |i| {
                        hits[i].fetch_add(i + 1, Ordering::Relaxed);
                    });
                    for (i, h) in hits.iter().enumerate() {
                        assert_eq!(
                            h.load(Ordering::Relaxed),
                            i + 1,
                            "threads {threads} round {round}"
                        );
                    }
                    // The static mapping also runs every item exactly once.
                    let runs: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
                    team.for_each_static(0..n, |i| {
                        runs[i].fetch_add(1, Ordering::Relaxed);
                    });
                    assert!(runs.iter().all(|r| r.load(Ordering::Relaxed) == 1));
                }
                let members: Vec<AtomicUsize> = (0..threads).map(|_| AtomicUsize::new(0)).collect();
                team.run(&|m| {
                    members[m].fetch_add(1, Ordering::Relaxed);
                });
                assert!(members.iter().all(|m| m.load(Ordering::Relaxed) == 1));
                let (mut x, mut y) = (0, 0);
                team.join(|| x = 1, || y = 2);
                assert_eq!((x, y), (1, 2));
            });
        }
    }

    #[test]
    fn timed_phases_sum_wall_time_and_the_wait_for_the_last_member() {
        for threads in [1, 2] {
            with_team(threads, |team| {
                // Untimed steps count nowhere.
                team.for_each(0..4usize, |_| {});
                let sleep = Duration::from_millis(30);
                team.timed(2, || {
                    team.for_each(0..2usize, |i| {
                        if i == 1 {
                            std::thread::sleep(sleep);
                        }
                    })
                });
                let t = team.take_times();
                assert_eq!(t[2].calls, 1);
                assert!(t[2].seconds >= sleep.as_secs_f64(), "{t:?}");
                if threads == 1 {
                    assert_eq!(t[2].spread_seconds, 0.0);
                } else {
                    // Whichever member took item 1 finished ≥ 30 ms after the other.
                    assert!(t[2].spread_seconds >= 0.025, "{t:?}");
                    assert!(t[2].spread_seconds <= t[2].seconds, "{t:?}");
                }
                for p in [0, 1, 3] {
                    assert_eq!(t[p], StepTimes::default());
                }
                // Taken, so reset.
                assert_eq!(team.take_times(), [StepTimes::default(); PHASES]);
            });
        }
    }

    #[test]
    fn late_steps_put_the_caller_alone_for_a_while() {
        with_team(2, |team| {
            let caller = std::thread::current().id();
            // A member that is 2 ms late in every step: the team goes solo after three such
            // steps in a row (more on a loaded machine, where a step can take longer than
            // the window), never before.
            let mut steps = 0;
            while !team.solo() {
                assert!(steps < 50, "still not solo after {steps} late steps");
                team.run(&|member| {
                    if member == 1 {
                        std::thread::sleep(Duration::from_millis(2));
                    }
                });
                steps += 1;
            }
            assert!(steps >= LATE_STEPS_BEFORE_SOLO);
            // Every part, every item and `extra` run once, all on the caller; `idle` once per
            // member.
            let parts = AtomicUsize::new(0);
            team.run(&|member| {
                assert_eq!(std::thread::current().id(), caller);
                parts.fetch_or(1 << member, Ordering::Relaxed);
            });
            assert_eq!(parts.load(Ordering::Relaxed), 0b11);
            let n = 20;
            let hits: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
            let (extra, idles) = (AtomicUsize::new(0), AtomicUsize::new(0));
            let on_caller = |i: usize| {
                assert_eq!(std::thread::current().id(), caller);
                hits[i].fetch_add(1, Ordering::Relaxed);
            };
            team.for_each(0..n, on_caller);
            team.for_each_static_and(
                0..n,
                on_caller,
                || {
                    extra.fetch_add(1, Ordering::Relaxed);
                },
                &|member| {
                    assert_eq!(std::thread::current().id(), caller);
                    idles.fetch_or(1 << member, Ordering::Relaxed);
                },
            );
            assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 2));
            assert_eq!(extra.load(Ordering::Relaxed), 1);
            assert_eq!(idles.load(Ordering::Relaxed), 0b11);
            std::thread::sleep(SOLO_FOR);
            assert!(!team.solo());
            // And back on both threads.
            let helpers_ran = AtomicUsize::new(0);
            team.run(&|_| {
                if std::thread::current().id() != caller {
                    helpers_ran.fetch_add(1, Ordering::Relaxed);
                }
            });
            assert_eq!(helpers_ran.load(Ordering::Relaxed), 1);
        });
    }

    #[test]
    fn static_items_run_on_their_members() {
        // Item i of n on member i·threads/n: the items of one thread form contiguous runs.
        for (threads, n) in [(2, 8), (3, 7), (2, 3 * STACK_SLOTS + 1)] {
            with_team(threads, |team| {
                // Where items run when no member falls behind (a member that is not scheduled
                // in time would otherwise lose items to the others).
                team.set_stealing(false);
                let owner: Vec<AtomicUsize> =
                    (0..n).map(|_| AtomicUsize::new(usize::MAX)).collect();
                let ids = Mutex::new(std::collections::HashMap::new());
                team.for_each_static(0..n, |i| {
                    let mut ids = ids.lock().unwrap();
                    let next = ids.len();
                    let me = *ids.entry(std::thread::current().id()).or_insert(next);
                    assert_eq!(owner[i].swap(me, Ordering::Relaxed), usize::MAX);
                });
                let owners: Vec<usize> = owner.iter().map(|o| o.load(Ordering::Relaxed)).collect();
                for i in 1..n {
                    let same = i * threads / n == (i - 1) * threads / n;
                    assert_eq!(same, owners[i] == owners[i - 1], "threads {threads} n {n}");
                }
                // The extra job runs once, on a member of the team, after that member's own
                // items (members are told apart by thread, as above).
                let done_by = Mutex::new(std::collections::HashMap::new());
                let runs = AtomicUsize::new(0);
                let idles = AtomicUsize::new(0);
                team.for_each_static_and(
                    0..n,
                    |_| {
                        *done_by
                            .lock()
                            .unwrap()
                            .entry(std::thread::current().id())
                            .or_insert(0) += 1
                    },
                    || {
                        runs.fetch_add(1, Ordering::Relaxed);
                        let me = std::thread::current().id();
                        // (A member with no items of its own is not in `ids`, and owns none.)
                        let member = ids.lock().unwrap().get(&me).copied();
                        let own = (0..n).filter(|&i| Some(owners[i]) == member).count();
                        let done = done_by.lock().unwrap().get(&me).copied().unwrap_or(0);
                        assert_eq!(done, own, "threads {threads} n {n}");
                    },
                    &|member| {
                        // Once per member (bit `member`), with nothing left to take.
                        assert_eq!(
                            idles.fetch_or(1 << member, Ordering::Relaxed) & (1 << member),
                            0
                        );
                    },
                );
                assert_eq!(runs.load(Ordering::Relaxed), 1);
                let every = if threads > 1 && n > 1 {
                    (1 << threads) - 1
                } else {
                    0
                };
                assert_eq!(
                    idles.swap(0, Ordering::Relaxed),
                    every,
                    "threads {threads} n {n}"
                );
            });
        }
    }

    #[test]
    fn a_late_members_items_go_to_the_others_but_never_its_last() {
        // Member 1 (a helper) is stuck in its first item until the caller has taken one of
        // its items: the caller, done with its own run, takes them from the back while at
        // least two are not started, so it takes some and leaves member 1 at least one. Every
        // item still runs exactly once, and the extra job once.
        for n in [8, 12, 3 * STACK_SLOTS + 2] {
            with_team(2, |team| {
                let caller = std::thread::current().id();
                let home1 = n.div_ceil(2)..n;
                let (runs, taken, extra) = (
                    (0..n).map(|_| AtomicUsize::new(0)).collect::<Vec<_>>(),
                    AtomicUsize::new(0),
                    AtomicUsize::new(0),
                );
                let by_helper = AtomicUsize::new(0);
                team.for_each_static_and(
                    0..n,
                    |i| {
                        runs[i].fetch_add(1, Ordering::Relaxed);
                        let on_caller = std::thread::current().id() == caller;
                        if on_caller && home1.contains(&i) {
                            taken.fetch_add(1, Ordering::SeqCst);
                        }
                        if !on_caller {
                            by_helper.fetch_add(1, Ordering::Relaxed);
                            let t = Instant::now();
                            while taken.load(Ordering::SeqCst) == 0 {
                                assert!(t.elapsed() < Duration::from_secs(20), "never helped");
                                std::thread::yield_now();
                            }
                        }
                    },
                    || {
                        extra.fetch_add(1, Ordering::Relaxed);
                    },
                    &|_| {},
                );
                assert!(runs.iter().all(|r| r.load(Ordering::Relaxed) == 1), "n {n}");
                assert_eq!(extra.load(Ordering::Relaxed), 1);
                let (stolen, helper) = (
                    taken.load(Ordering::SeqCst),
                    by_helper.load(Ordering::Relaxed),
                );
                assert!(stolen >= 1 && stolen < home1.len(), "n {n}: {stolen} taken");
                // The helper ran its first item and whatever else of its run the caller left.
                assert!(helper >= 1 && helper + stolen == home1.len(), "n {n}");
            });
        }
    }

    #[test]
    fn tasks_after_the_helpers_parked_still_run() {
        with_team(2, |team| {
            std::thread::sleep(Duration::from_millis(20));
            let sum = AtomicUsize::new(0);
            team.for_each(vec![1, 2, 3, 4], |v| {
                sum.fetch_add(v, Ordering::Relaxed);
            });
            assert_eq!(sum.load(Ordering::Relaxed), 10);
        });
    }

    #[test]
    fn a_panicking_task_panics_the_caller_and_the_team_stops() {
        let r = std::panic::catch_unwind(|| {
            with_team(2, |team| {
                team.run(&|m| {
                    if m == 1 {
                        panic!("boom");
                    }
                });
            })
        });
        assert!(r.is_err());
    }
}
