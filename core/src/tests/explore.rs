//! Schedule exploration: proptest generates small programs for several concurrent events on
//! one object (reads, writes, read-modify-writes, coalesced writes, `sync`, output-gate waits,
//! critical sections, async transactions, outbound I/O, timers, plain futures, resets), runs
//! them against the real runtime and store under random send times, random durability windows
//! (the store's durability hold) and random yields, and checks what happened against the
//! gates' promises:
//!
//! 1. **No lost update**: the values acknowledged read-modify-writes wrote to a counter are all
//!    different, and the durable counter is at least the largest of them.
//! 2. **Exclusion**: while an event has a gated read outstanding, a critical section or an
//!    async transaction open, no code of another event runs (and no event starts).
//! 3. **Nothing observed before it is durable**: an output (a response, outbound I/O) observed
//!    outside while no durability window has opened since a confirmed write that preceded it
//!    is a leak.
//! 4. **Coalesced writes are atomic**: two keys written with no await between them are never
//!    seen apart in committed storage.
//! 5. **A broken gate drops every held message**: an output sent before a reset and not yet
//!    observed is never observed afterwards.
//!
//! Each event logs what it does into one ordered log (the object runs on one executor thread,
//! the harness on the test's; a mutex orders the two).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::AtomicU64;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestError, TestRunner};

use super::*;

/// Namespaces whose storage reads skip the input lock: the planted bug the explorer must find.
static PLANTED: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Called by `Storage::read` (tests only): whether this namespace has the planted bug.
pub(crate) fn read_skips_the_lock(namespace: &str) -> bool {
    PLANTED
        .lock()
        .map(|p| p.iter().any(|n| n == namespace))
        .unwrap_or(false)
}

#[derive(Debug, Clone)]
enum Op {
    /// `get(c{k})`, then `put(c{k}, n + 1)`: the read-modify-write the gates make atomic.
    Inc(u8),
    /// A read; `true`: with `allow_concurrency`.
    Get(u8, bool),
    /// A blind write of a fresh value.
    Put(u8),
    /// `a` and `b` written with the same fresh value, no await between them.
    Pair,
    Sync,
    OutputWait,
    /// A plain future: `n` yields, not gated by anything.
    Yield(u8),
    /// A timer through `ctx.gated`.
    Timer(u8),
    /// Outbound I/O through `ctx.outbound` taking `n` yields.
    Outbound(u8),
    /// `block_concurrency_while` running these ops.
    Cs(Vec<Op>),
    /// `transaction_async`: read counter `k`, `n` yields, write it + 1.
    Txn(u8, u8),
    /// `ctx.reset()`.
    Abort,
}

fn leaf() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0u8..2).prop_map(Op::Inc),
        2 => (0u8..2, any::<bool>()).prop_map(|(k, c)| Op::Get(k, c)),
        2 => (0u8..2).prop_map(Op::Put),
        2 => Just(Op::Pair),
        2 => Just(Op::Sync),
        2 => Just(Op::OutputWait),
        2 => (0u8..4).prop_map(Op::Yield),
        2 => (0u8..4).prop_map(Op::Timer),
        2 => (0u8..4).prop_map(Op::Outbound),
        2 => (0u8..2, 0u8..4).prop_map(|(k, n)| Op::Txn(k, n)),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        20 => leaf(),
        3 => prop::collection::vec(leaf(), 1..4).prop_map(Op::Cs),
        1 => Just(Op::Abort),
    ]
}

#[derive(Debug, Clone)]
struct Case {
    /// Per event: its ops, and after how many harness steps it is sent.
    events: Vec<(Vec<Op>, u8)>,
    /// Harness steps at which the durability hold is dropped for one step.
    windows: Vec<u8>,
}

fn case() -> impl Strategy<Value = Case> {
    (
        prop::collection::vec((prop::collection::vec(op(), 1..6), 0u8..4), 2..5),
        prop::collection::vec(0u8..12, 0..4),
    )
        .prop_map(|(events, windows)| Case { events, windows })
}

/// One log entry. `ev` is the event's index, `gen` the instance it ran in.
#[derive(Debug, Clone, PartialEq)]
enum Entry {
    Start {
        ev: usize,
        gen: u64,
    },
    Ran {
        ev: usize,
        gen: u64,
    },
    ReadIssue {
        ev: usize,
        gen: u64,
    },
    ReadDone {
        ev: usize,
    },
    Enter {
        ev: usize,
        gen: u64,
    },
    Exit {
        ev: usize,
    },
    Write {
        ev: usize,
        gen: u64,
    },
    Wrote {
        ev: usize,
        key: u8,
        value: u64,
    },
    /// An output leaves the object's code: `response` for the event's reply (observed by the
    /// harness when the caller gets it), else outbound I/O (observed when the I/O starts).
    Send {
        out: u64,
        gen: u64,
        response: bool,
    },
    Observe {
        out: u64,
    },
    Reset {
        gen: u64,
    },
    /// The harness dropped the durability hold: batches may become durable from here on...
    Window,
    /// ... until it takes it again.
    Hold,
}

type EventLog = Arc<Mutex<Vec<Entry>>>;

fn push(log: &EventLog, e: Entry) {
    log.lock().unwrap().push(e);
}

static NEXT_GEN: AtomicU64 = AtomicU64::new(1);
static NEXT_OUT: AtomicU64 = AtomicU64::new(1);
static NEXT_VALUE: AtomicU64 = AtomicU64::new(1);

/// The programs of the running cases, by object name.
type Programs = Arc<Mutex<HashMap<String, Vec<Vec<Op>>>>>;

fn parse(v: Option<Bytes>) -> u64 {
    v.map(|b| String::from_utf8_lossy(&b).parse().unwrap_or(0))
        .unwrap_or(0)
}

async fn yields(n: u8) {
    for _ in 0..n {
        tokio::task::yield_now().await;
    }
}

struct Run {
    ctx: ActorContext,
    log: EventLog,
    ev: usize,
    gen: u64,
}

impl Run {
    fn ran(&self) {
        push(
            &self.log,
            Entry::Ran {
                ev: self.ev,
                gen: self.gen,
            },
        );
    }

    fn wrote(&self) {
        push(
            &self.log,
            Entry::Write {
                ev: self.ev,
                gen: self.gen,
            },
        );
    }

    fn ops<'a>(&'a self, ops: &'a [Op]) -> LocalBoxFuture<'a, Result<(), ActorError>> {
        Box::pin(async move {
            for op in ops {
                self.ran();
                self.op(op).await?;
                self.ran();
            }
            Ok(())
        })
    }

    async fn op(&self, op: &Op) -> Result<(), ActorError> {
        let s = self.ctx.storage();
        let (ev, gen) = (self.ev, self.gen);
        match op {
            Op::Inc(k) => {
                push(&self.log, Entry::ReadIssue { ev, gen });
                let n = parse(s.get(&format!("c{k}")).await?) + 1;
                push(&self.log, Entry::ReadDone { ev });
                s.put(&format!("c{k}"), Bytes::from(n.to_string()))?;
                self.wrote();
                push(
                    &self.log,
                    Entry::Wrote {
                        ev,
                        key: *k,
                        value: n,
                    },
                );
            }
            Op::Get(k, concurrent) => {
                if !concurrent {
                    push(&self.log, Entry::ReadIssue { ev, gen });
                }
                let opts = ReadOptions {
                    allow_concurrency: *concurrent,
                    ..ReadOptions::default()
                };
                s.get_with(&format!("c{k}"), opts).await?;
                if !concurrent {
                    push(&self.log, Entry::ReadDone { ev });
                }
            }
            Op::Put(k) => {
                let v = NEXT_VALUE.fetch_add(1, Ordering::SeqCst);
                s.put(&format!("p{k}"), Bytes::from(v.to_string()))?;
                self.wrote();
            }
            Op::Pair => {
                let v = Bytes::from(NEXT_VALUE.fetch_add(1, Ordering::SeqCst).to_string());
                s.put("a", v.clone())?;
                s.put("b", v)?;
                self.wrote();
            }
            Op::Sync => s.sync().await?,
            Op::OutputWait => self.ctx.output_gate().wait().await?,
            Op::Yield(n) => yields(*n).await,
            Op::Timer(n) => self.ctx.gated(yields(*n)).await?,
            Op::Outbound(n) => {
                let out = NEXT_OUT.fetch_add(1, Ordering::SeqCst);
                push(
                    &self.log,
                    Entry::Send {
                        out,
                        gen,
                        response: false,
                    },
                );
                let log = self.log.clone();
                let n = *n;
                self.ctx
                    .outbound(async move {
                        push(&log, Entry::Observe { out });
                        yields(n).await;
                    })
                    .await?;
            }
            Op::Cs(inner) => {
                let run = Run {
                    ctx: self.ctx.clone(),
                    log: self.log.clone(),
                    ev,
                    gen,
                };
                let inner = inner.clone();
                self.ctx
                    .block_concurrency_while(async move {
                        push(&run.log, Entry::Enter { ev, gen });
                        let r = run.ops(&inner).await;
                        push(&run.log, Entry::Exit { ev });
                        r
                    })
                    .await?;
            }
            Op::Txn(k, n) => {
                let log = self.log.clone();
                let (k, n) = (*k, *n);
                s.transaction_async(move |txn| {
                    Box::pin(async move {
                        push(&log, Entry::Enter { ev, gen });
                        let v = parse(txn.get(&format!("c{k}"))?) + 1;
                        yields(n).await;
                        txn.put(&format!("c{k}"), Bytes::from(v.to_string()))?;
                        push(&log, Entry::Write { ev, gen });
                        push(
                            &log,
                            Entry::Wrote {
                                ev,
                                key: k,
                                value: v,
                            },
                        );
                        push(&log, Entry::Exit { ev });
                        Ok::<_, ActorError>(())
                    })
                })
                .await?;
            }
            Op::Abort => {
                push(&self.log, Entry::Reset { gen });
                self.ctx
                    .reset("Durable Object reset: aborted by the explorer");
            }
        }
        Ok(())
    }
}

struct Explorer {
    rt: Runtime,
    store: Arc<Store>,
    programs: Programs,
    log: EventLog,
    namespace: String,
    cases: AtomicU64,
    _dir: tempfile::TempDir,
}

impl Explorer {
    fn new(namespace: &str) -> Explorer {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let programs: Programs = Arc::default();
        let log: EventLog = Arc::default();
        let (p, l) = (programs.clone(), log.clone());
        let script = Script::new(move |obj, path| {
            let (p, l) = (p.clone(), l.clone());
            Box::pin(async move {
                // "/<object>/<event>"
                let mut parts = path.trim_start_matches('/').split('/');
                let (name, ev) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
                let ev: usize = ev.parse().unwrap_or(0);
                let ops = p.lock().unwrap().get(name).map(|v| v[ev].clone());
                let Some(ops) = ops else {
                    return Ok(String::new());
                };
                if obj.mem.get() == 0 {
                    obj.mem.set(NEXT_GEN.fetch_add(1, Ordering::SeqCst));
                }
                let gen = obj.mem.get();
                push(&l, Entry::Start { ev, gen });
                let run = Run {
                    ctx: obj.ctx.clone(),
                    log: l.clone(),
                    ev,
                    gen,
                };
                run.ops(&ops).await?;
                let out = NEXT_OUT.fetch_add(1, Ordering::SeqCst);
                push(
                    &l,
                    Entry::Send {
                        out,
                        gen,
                        response: true,
                    },
                );
                Ok(out.to_string())
            })
        });
        let rt = Runtime::start(
            store.clone(),
            test_config(),
            vec![spec(namespace, script), barrier_spec()],
        )
        .unwrap();
        Explorer {
            rt,
            store,
            programs,
            log,
            namespace: namespace.to_string(),
            cases: AtomicU64::new(0),
            _dir: dir,
        }
    }

    /// Runs one case and returns the first broken promise, if any.
    async fn run(&self, case: &Case) -> Result<(), String> {
        let n = self.cases.fetch_add(1, Ordering::SeqCst);
        let name = format!("case{n}");
        self.programs.lock().unwrap().insert(
            name.clone(),
            case.events.iter().map(|(ops, _)| ops.clone()).collect(),
        );
        self.log.lock().unwrap().clear();
        let ns = self.rt.namespace(&self.namespace).unwrap();
        let stub = ns.get_by_name(&name);
        let mut hold = Some(self.store.hold_durability());
        let mut pending: Vec<(usize, LocalBoxFuture<'_, Result<String, ObjectError>>)> = Vec::new();
        let mut results: BTreeMap<usize, Result<String, ObjectError>> = BTreeMap::new();
        let mut step = 0u8;
        let stub = &stub;
        loop {
            for (i, (_, at)) in case.events.iter().enumerate() {
                if *at == step {
                    let path = format!("/{name}/{i}");
                    let mut f: LocalBoxFuture<'_, _> =
                        Box::pin(async move { text(stub, &path).await });
                    // The first poll sends the event.
                    if let std::task::Poll::Ready(r) = futures::poll!(f.as_mut()) {
                        results.insert(i, r);
                    } else {
                        pending.push((i, f));
                    }
                }
            }
            // One step: the executor gets a round, answers are collected.
            barrier(&self.rt).await;
            let mut still = Vec::new();
            for (i, mut f) in pending.drain(..) {
                match futures::poll!(f.as_mut()) {
                    std::task::Poll::Ready(r) => {
                        if let Ok(out) = &r {
                            push(
                                &self.log,
                                Entry::Observe {
                                    out: out.parse().unwrap_or(0),
                                },
                            );
                        }
                        results.insert(i, r);
                    }
                    std::task::Poll::Pending => still.push((i, f)),
                }
            }
            pending = still;
            // Durability: held, except in the case's windows.
            let open = case.windows.contains(&step);
            if open && hold.is_some() {
                push(&self.log, Entry::Window);
                hold = None;
            } else if !open && hold.is_none() {
                hold = Some(self.store.hold_durability());
                push(&self.log, Entry::Hold);
                self.check_pair(stub)?;
            }
            step += 1;
            if step >= 16 {
                break;
            }
        }
        // Then durability flows, and every event must finish.
        if hold.take().is_some() {
            push(&self.log, Entry::Window);
        }
        for (i, f) in pending.drain(..) {
            let r = match tokio::time::timeout(DEADLINE, f).await {
                Ok(r) => r,
                Err(_) => {
                    let log = self.log.lock().unwrap().clone();
                    return Err(format!("event {i} never finished; log: {log:?}"));
                }
            };
            if let Ok(out) = &r {
                push(
                    &self.log,
                    Entry::Observe {
                        out: out.parse().unwrap_or(0),
                    },
                );
            }
            results.insert(i, r);
        }
        drop(hold);
        within("durable", self.store.barrier()).await.ok();
        // A reset answers every caller from inside the poll of the code that reset: let that
        // poll end before the log is read (and cleared for the next case).
        barrier(&self.rt).await;
        self.check_pair(stub)?;
        let log = self.log.lock().unwrap().clone();
        let acknowledged: HashSet<usize> = results
            .iter()
            .filter(|(_, r)| r.is_ok())
            .map(|(i, _)| *i)
            .collect();
        for (i, r) in &results {
            if let Err(e) = r {
                if !matches!(e, ObjectError::Reset(_)) {
                    return Err(format!("event {i} failed: {e}"));
                }
            }
        }
        let committed = self.store.object(*stub.id().bytes());
        let durable = |k: u8| parse(committed.get(&format!("c{k}")).unwrap());
        check(&log, &acknowledged, durable).map_err(|e| {
            let lines: Vec<String> = log
                .iter()
                .enumerate()
                .map(|(i, e)| format!("{i}: {e:?}"))
                .collect();
            format!("{e}\nlog:\n{}", lines.join("\n"))
        })
    }

    /// What fjall holds of the pair: never one half of a batch. (Only `Pair` writes `a` and
    /// `b`, with fresh values; if `a` did not change around the read of `b`, no batch was
    /// applied in between, so `b` must match it.)
    fn check_pair(&self, stub: &Stub) -> Result<(), String> {
        let o = self.store.object(*stub.id().bytes());
        let fjall = cinder_storage::ReadOptions { no_cache: true };
        let a1 = o.get_with("a", fjall).unwrap();
        let b = o.get_with("b", fjall).unwrap();
        let a2 = o.get_with("a", fjall).unwrap();
        if a1 == a2 && a1 != b {
            return Err(format!("coalesced writes seen apart: a={a1:?} b={b:?}"));
        }
        Ok(())
    }
}

/// Checks the promises over a finished case's log.
fn check(
    log: &[Entry],
    acknowledged: &HashSet<usize>,
    durable: impl Fn(u8) -> u64,
) -> Result<(), String> {
    // 1. No lost update.
    let mut values: HashMap<u8, Vec<u64>> = HashMap::new();
    for e in log {
        if let Entry::Wrote { ev, key, value } = e {
            if acknowledged.contains(ev) {
                values.entry(*key).or_default().push(*value);
            }
        }
    }
    for (k, vs) in &values {
        let distinct: HashSet<_> = vs.iter().collect();
        if distinct.len() != vs.len() {
            return Err(format!("lost update on c{k}: acknowledged values {vs:?}"));
        }
        let max = vs.iter().max().copied().unwrap_or(0);
        if durable(*k) < max {
            return Err(format!(
                "c{k} is {} after {max} was acknowledged",
                durable(*k)
            ));
        }
    }
    // 2. Exclusion: while (ev, gen) holds a read, a section or a transaction, nobody else runs.
    // (Code of an instance that was already reset holds nothing: its calls fail at once.)
    let mut reset_at: HashMap<u64, usize> = HashMap::new();
    for (i, e) in log.iter().enumerate() {
        if let Entry::Reset { gen } = e {
            reset_at.entry(*gen).or_insert(i);
        }
    }
    for (i, e) in log.iter().enumerate() {
        let (ev, gen, is_read) = match e {
            Entry::ReadIssue { ev, gen } => (*ev, *gen, true),
            Entry::Enter { ev, gen } => (*ev, *gen, false),
            _ => continue,
        };
        if reset_at.get(&gen).is_some_and(|&r| r < i) {
            continue;
        }
        // Sections nest (a transaction inside a critical section); reads do not.
        let mut depth = 0usize;
        for later in &log[i + 1..] {
            match later {
                Entry::ReadDone { ev: e2 } if *e2 == ev && is_read => break,
                Entry::Enter { ev: e2, .. } if *e2 == ev && !is_read => depth += 1,
                Entry::Exit { ev: e2 } if *e2 == ev && !is_read => {
                    if depth == 0 {
                        break;
                    }
                    depth -= 1;
                }
                // A reset of that instance ends whatever it held.
                Entry::Reset { gen: g } if *g == gen => break,
                Entry::Start { ev: e2, .. }
                | Entry::Ran { ev: e2, .. }
                | Entry::Write { ev: e2, .. }
                | Entry::ReadIssue { ev: e2, .. }
                | Entry::Enter { ev: e2, .. }
                    if *e2 != ev =>
                {
                    let what = if is_read { "read" } else { "critical section" };
                    return Err(format!(
                        "event {e2} ran while event {ev} had a {what} outstanding \
                         (opened at {i}): {later:?}"
                    ));
                }
                _ => {}
            }
        }
    }
    // 3. Nothing observed before it is durable; 5. a reset drops what it held.
    let mut released = Vec::with_capacity(log.len());
    let mut open = false;
    for e in log {
        match e {
            Entry::Window => open = true,
            Entry::Hold => open = false,
            _ => {}
        }
        released.push(open);
    }
    let mut sent_at: HashMap<u64, (usize, u64, bool)> = HashMap::new();
    for (i, e) in log.iter().enumerate() {
        if let Entry::Send { out, gen, response } = e {
            sent_at.insert(*out, (i, *gen, *response));
        }
    }
    for (p, e) in log.iter().enumerate() {
        let Entry::Observe { out } = e else { continue };
        let Some(&(s, gen, response)) = sent_at.get(out) else {
            return Err(format!("output {out} observed but never sent"));
        };
        for (q, w) in log[..s].iter().enumerate() {
            let Entry::Write { gen: g, .. } = w else {
                continue;
            };
            if *g != gen {
                continue;
            }
            if !released[q..p].iter().any(|r| *r) {
                return Err(format!(
                    "output {out} observed at {p} while the write at {q} cannot be durable yet"
                ));
            }
        }
        // (A response is observed by the harness some time after it left, so only outbound
        // I/O, observed where it starts, is timed precisely enough for this.)
        if let Some(x) = log[s..p]
            .iter()
            .position(|x| !response && matches!(x, Entry::Reset { gen: g } if *g == gen))
        {
            return Err(format!(
                "output {out}, held when its instance was reset (at {}), was observed at {p}",
                s + x
            ));
        }
    }
    Ok(())
}

/// Runs the explorer with proptest's default case count; `Err` describes the first failure.
fn explore(namespace: &str, config: Config) -> Result<(), TestError<Case>> {
    let explorer = Explorer::new(namespace);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut runner = TestRunner::new(config);
    let result = runner.run(&case(), |case| {
        rt.block_on(explorer.run(&case))
            .map_err(TestCaseError::fail)
    });
    eprintln!(
        "explorer ({namespace}): {} cases run",
        explorer.cases.load(Ordering::SeqCst)
    );
    let Explorer { rt: runtime, .. } = explorer;
    runtime.shutdown();
    result
}

#[test]
fn schedules_keep_the_gates_promises() {
    if let Err(e) = explore("explore", Config::default()) {
        panic!("{e}");
    }
}

/// The explorer earns its keep: with storage reads that skip the input lock planted in, it
/// finds a broken promise within its default case count.
#[test]
fn the_explorer_finds_a_read_that_skips_the_lock() {
    PLANTED.lock().unwrap().push("planted".into());
    let config = Config {
        max_shrink_iters: 0,
        failure_persistence: None,
        ..Config::default()
    };
    match explore("planted", config) {
        Err(TestError::Fail(why, _)) => eprintln!("found: {why}"),
        other => panic!("the planted bug went unnoticed: {other:?}"),
    }
}
