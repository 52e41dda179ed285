//! CPU-time limits: a watchdog thread that reads each executor thread's CPU clock
//! (`pthread_getcpuclockid`) and terminates the isolate running on it once the running
//! event's budget is spent. Time spent awaiting I/O costs no CPU, so it is never charged.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use deno_core::v8;

/// How often the watchdog looks at the armed slots. Bounds how far past its budget an event
/// can run (plus the time V8 takes to honour the termination request).
const TICK: Duration = Duration::from_millis(5);

/// CPU time the calling thread has used.
pub fn thread_cpu_now() -> Duration {
    clock_now(libc::CLOCK_THREAD_CPUTIME_ID)
}

fn clock_now(clock: libc::clockid_t) -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the call only writes to it.
    let rc = unsafe { libc::clock_gettime(clock, &mut ts) };
    if rc != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

struct Armed {
    handle: v8::IsolateHandle,
    deadline: Duration,
}

/// One per executor thread: the isolate it is running right now and when that must stop.
pub(crate) struct Slot {
    clock: libc::clockid_t,
    armed: Mutex<Option<Armed>>,
    fired: AtomicBool,
    /// When the JS turn running now started (ms on the process clock, +1), 0 when none runs:
    /// the host steers new stateless events away from a thread in the middle of a turn.
    busy_since: Arc<AtomicU64>,
}

/// Milliseconds since the process started, +1 (0 means "not busy").
pub(crate) fn busy_clock() -> u64 {
    static START: OnceLock<std::time::Instant> = OnceLock::new();
    START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_millis() as u64
        + 1
}

impl Slot {
    /// Registers the calling thread with the watchdog.
    pub fn for_current_thread(busy_since: Arc<AtomicU64>) -> Arc<Slot> {
        let mut clock: libc::clockid_t = libc::CLOCK_THREAD_CPUTIME_ID;
        // SAFETY: pthread_self() is the calling thread; `clock` is a valid out-pointer.
        let rc = unsafe { libc::pthread_getcpuclockid(libc::pthread_self(), &mut clock) };
        if rc != 0 {
            tracing::warn!("pthread_getcpuclockid failed ({rc}); CPU limits are not enforced");
        }
        let slot = Arc::new(Slot {
            clock,
            armed: Mutex::new(None),
            fired: AtomicBool::new(false),
            busy_since,
        });
        if rc == 0 {
            watchdog().register(&slot);
        }
        slot
    }

    /// From now until [`disarm`](Self::disarm), terminate `handle` once this thread's CPU clock
    /// passes `now + budget`.
    pub fn arm(&self, handle: v8::IsolateHandle, budget: Duration) {
        let deadline = thread_cpu_now().saturating_add(budget);
        self.fired.store(false, Ordering::SeqCst);
        self.busy_since.store(busy_clock(), Ordering::Relaxed);
        if let Ok(mut a) = self.armed.lock() {
            *a = Some(Armed { handle, deadline });
        }
    }

    /// Returns whether the watchdog terminated the isolate while armed.
    pub fn disarm(&self) -> bool {
        if let Ok(mut a) = self.armed.lock() {
            *a = None;
        }
        self.busy_since.store(0, Ordering::Relaxed);
        self.fired.swap(false, Ordering::SeqCst)
    }

    fn check(&self) {
        let Ok(mut a) = self.armed.lock() else { return };
        let due = match a.as_ref() {
            Some(armed) => clock_now(self.clock) >= armed.deadline,
            None => false,
        };
        if due {
            if let Some(armed) = a.take() {
                self.fired.store(true, Ordering::SeqCst);
                armed.handle.terminate_execution();
            }
        }
    }
}

struct Watchdog {
    slots: Mutex<Vec<Weak<Slot>>>,
}

impl Watchdog {
    fn register(&self, slot: &Arc<Slot>) {
        if let Ok(mut s) = self.slots.lock() {
            s.retain(|w| w.strong_count() > 0);
            s.push(Arc::downgrade(slot));
        }
    }
}

fn watchdog() -> &'static Watchdog {
    static W: OnceLock<&'static Watchdog> = OnceLock::new();
    W.get_or_init(|| {
        let w: &'static Watchdog = Box::leak(Box::new(Watchdog {
            slots: Mutex::new(Vec::new()),
        }));
        let spawned = std::thread::Builder::new()
            .name("cinder-cpu-watchdog".into())
            .spawn(move || loop {
                std::thread::sleep(TICK);
                let slots: Vec<Arc<Slot>> = match w.slots.lock() {
                    Ok(s) => s.iter().filter_map(|x| x.upgrade()).collect(),
                    Err(_) => continue,
                };
                for s in slots {
                    s.check();
                }
            });
        if let Err(e) = spawned {
            tracing::error!("could not start the CPU watchdog: {e}; CPU limits are not enforced");
        }
        w
    })
}
