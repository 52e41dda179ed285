//! Alarms: one per object, persisted in the storage alarm table, scheduled per executor thread.
//!
//! Storage is the truth; the scheduler only knows *when to look*. At start-up every executor
//! loads the alarms of its objects from [`cinder_storage::Store::alarms`], so alarms survive
//! restarts and wake evicted objects. Later changes (`set_alarm`, `delete_alarm`, a
//! transaction's) reach the scheduler when their batch is durable, never before. When an entry comes due, an alarm event goes through the
//! object's queue and gates like any other event, and before the handler runs the object's
//! alarm slot is read again: an alarm that was replaced or deleted (or whose write never became
//! durable) is skipped.
//!
//! Delivery is at-least-once: the slot is cleared only after the handler succeeds, in a normal
//! write batch, so a crash mid-handler runs it again after restart. A failing handler is retried
//! up to [`RuntimeConfig::alarm_max_retries`] times (6), the n-th retry
//! `alarm_retry_base · 2ⁿ` (2 s · 2ⁿ) after the failure; retries are kept in memory only (after
//! a restart the alarm starts again at retry 0).

use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap};
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::future::LocalBoxFuture;
use tokio::sync::Notify;

use crate::actor::{Actor, AlarmInfo};
use crate::context::ActorContext;
use crate::error::ActorError;
use crate::executor::{Envelope, Event, Executor, Reply};
use crate::id::ObjectId;
use crate::runtime::{NamespaceEntry, RuntimeConfig};

/// Milliseconds since the Unix epoch, the unit of alarm times.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The longest single sleep: far-future alarms are re-checked daily rather than handed to the
/// timer wheel as huge durations.
const MAX_SLEEP: Duration = Duration::from_secs(24 * 3600);

struct Pending {
    id: ObjectId,
    ns: Arc<NamespaceEntry>,
    fire_at: i64,
    scheduled_time: i64,
    retry_count: u32,
}

/// The alarms of one executor thread's objects, earliest first.
#[derive(Default)]
pub(crate) struct AlarmScheduler {
    entries: RefCell<HashMap<[u8; 32], Pending>>,
    order: RefCell<BTreeSet<(i64, [u8; 32])>>,
    wake: Notify,
}

impl AlarmScheduler {
    /// Sets (replaces) the object's alarm.
    pub(crate) fn schedule(&self, id: &ObjectId, ns: &Arc<NamespaceEntry>, at: i64) {
        self.insert(Pending {
            id: id.clone(),
            ns: ns.clone(),
            fire_at: at,
            scheduled_time: at,
            retry_count: 0,
        });
    }

    fn retry(
        &self,
        id: &ObjectId,
        ns: &Arc<NamespaceEntry>,
        scheduled_time: i64,
        retry_count: u32,
        delay: Duration,
    ) {
        self.insert(Pending {
            id: id.clone(),
            ns: ns.clone(),
            fire_at: now_ms().saturating_add(delay.as_millis() as i64),
            scheduled_time,
            retry_count,
        });
    }

    fn insert(&self, p: Pending) {
        let key = *p.id.bytes();
        let fire_at = p.fire_at;
        let old = self.entries.borrow_mut().insert(key, p);
        let mut order = self.order.borrow_mut();
        if let Some(old) = old {
            order.remove(&(old.fire_at, key));
        }
        order.insert((fire_at, key));
        drop(order);
        self.wake.notify_one();
    }

    pub(crate) fn cancel(&self, key: &[u8; 32]) {
        if let Some(old) = self.entries.borrow_mut().remove(key) {
            self.order.borrow_mut().remove(&(old.fire_at, *key));
        }
        self.wake.notify_one();
    }

    /// Fires due alarms into the executor until the executor goes away.
    pub(crate) async fn run(self: Rc<Self>, exec: Weak<Executor>) {
        loop {
            let first = self.order.borrow().first().copied();
            let Some((at, key)) = first else {
                self.wake.notified().await;
                continue;
            };
            let delay = at.saturating_sub(now_ms());
            if delay > 0 {
                let sleep = Duration::from_millis(delay as u64).min(MAX_SLEEP);
                tokio::select! {
                    _ = tokio::time::sleep(sleep) => {}
                    _ = self.wake.notified() => {}
                }
                continue;
            }
            self.order.borrow_mut().remove(&(at, key));
            let Some(p) = self.entries.borrow_mut().remove(&key) else {
                continue;
            };
            let Some(exec) = exec.upgrade() else { return };
            exec.dispatch(Envelope {
                ns: p.ns,
                id: p.id,
                event: Event::Alarm {
                    scheduled_time: p.scheduled_time,
                    retry_count: p.retry_count,
                },
                reply: None,
            });
        }
    }
}

/// Schedules a retry if the run ends without reaching a verdict (the object was reset while
/// the handler ran): at-least-once.
struct Unfinished {
    ctx: ActorContext,
    scheduled_time: i64,
    retry_count: u32,
    done: bool,
}

impl Drop for Unfinished {
    fn drop(&mut self) {
        if !self.done {
            let i = &self.ctx.inner;
            let delay = retry_delay(&i.cfg, self.retry_count);
            i.alarms.retry(
                &i.id,
                &i.ns,
                self.scheduled_time,
                self.retry_count + 1,
                delay,
            );
        }
    }
}

fn retry_delay(cfg: &RuntimeConfig, failed_attempt: u32) -> Duration {
    cfg.alarm_retry_base
        .saturating_mul(1u32.checked_shl(failed_attempt).unwrap_or(u32::MAX))
}

/// Runs one alarm event on an instance (see the module docs for the protocol).
pub(crate) fn run_alarm(
    ctx: ActorContext,
    actor: Rc<dyn Actor>,
    scheduled_time: i64,
    retry_count: u32,
) -> LocalBoxFuture<'static, Result<Reply, ActorError>> {
    Box::pin(async move {
        let inner = &ctx.inner;
        match inner.raw.get_alarm() {
            Ok(Some(t)) if t == scheduled_time => {}
            // Replaced (the scheduler has the new time) or deleted: nothing to run.
            Ok(_) => return Ok(Reply::Alarm),
            Err(e) => {
                inner.alarms.retry(
                    &inner.id,
                    &inner.ns,
                    scheduled_time,
                    retry_count,
                    retry_delay(&inner.cfg, retry_count),
                );
                return Err(e.into());
            }
        }
        inner.running_alarm.set(Some(scheduled_time));
        let mut unfinished = Unfinished {
            ctx: ctx.clone(),
            scheduled_time,
            retry_count,
            done: false,
        };
        let result = actor
            .alarm(AlarmInfo {
                scheduled_time,
                retry_count,
                is_retry: retry_count > 0,
            })
            .await;
        inner.running_alarm.set(None);
        // Whether the slot still holds this alarm, i.e. the handler did not set a new one.
        let still_ours = matches!(inner.raw.get_alarm(), Ok(Some(t)) if t == scheduled_time);
        match result {
            Ok(()) => {
                if still_ours {
                    ctx.storage().delete_alarm()?;
                }
                // Until clearing the slot is durable, a reset (which discards the write) must
                // still lead to another run: `unfinished` schedules it if we never get past
                // this await.
                ctx.storage().sync().await?;
                unfinished.done = true;
                Ok(Reply::Alarm)
            }
            Err(e) => {
                unfinished.done = true;
                if still_ours {
                    if retry_count < inner.cfg.alarm_max_retries {
                        let delay = retry_delay(&inner.cfg, retry_count);
                        tracing::warn!(object = %inner.id, retry_count, ?delay, error = %e, "alarm handler failed; retrying");
                        inner.alarms.retry(
                            &inner.id,
                            &inner.ns,
                            scheduled_time,
                            retry_count + 1,
                            delay,
                        );
                    } else {
                        tracing::error!(object = %inner.id, retry_count, error = %e, "alarm handler failed; giving up");
                        ctx.storage().delete_alarm()?;
                    }
                }
                Err(e)
            }
        }
    })
}
