//! Alarms: one per object, persisted in the storage alarm table, scheduled per executor thread.
//!
//! Storage is the truth; the scheduler only knows *when to look*. At start-up every executor
//! loads the alarms of its objects from [`cinder_storage::Store::alarm_states`], so alarms
//! survive restarts and wake evicted objects. Later changes (`set_alarm`, `delete_alarm`, a
//! transaction's, a retry's) reach the scheduler when their batch is durable, never before, and
//! in the order the batches were committed (the object's slot sees to that). When an entry
//! comes due, an alarm event goes through the object's queue and gates like any other event,
//! and before the handler runs the object's alarm slot is read again: an alarm that was
//! replaced or deleted (or whose write never became durable) is skipped.
//!
//! Delivery is at-least-once. The scheduler keeps watching every alarm event it sent: if the
//! event ends without a verdict — the constructor failed, the instance was reset before or
//! during the run, clearing the slot did not become durable — it schedules the alarm again
//! (as a failed run, with the same back-off). A handler that fails is retried up to
//! [`RuntimeConfig::alarm_max_retries`] times (6), the n-th retry `alarm_retry_base · 2ⁿ`
//! (2 s · 2ⁿ) after the failure; the retry count and the next run's time are written into the
//! alarm slot, so retries continue where they were after a restart. On success the slot is
//! cleared in a normal write batch.

use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap};
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cinder_storage::AlarmState;
use futures::future::LocalBoxFuture;
use tokio::sync::{oneshot, Notify};

use crate::actor::{Actor, AlarmInfo};
use crate::context::ActorContext;
use crate::error::{ActorError, ObjectError};
use crate::executor::{Envelope, Event, Executor, Reply};
use crate::id::ObjectId;
use crate::runtime::{NamespaceEntry, RuntimeConfig};
use crate::storage::WriteOptions;

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
    state: AlarmState,
}

/// The alarms of one executor thread's objects, earliest first.
#[derive(Default)]
pub(crate) struct AlarmScheduler {
    entries: RefCell<HashMap<[u8; 32], Pending>>,
    order: RefCell<BTreeSet<(i64, [u8; 32])>>,
    wake: Notify,
}

impl AlarmScheduler {
    /// Sets (replaces) the object's alarm: it fires at `state.next_ms`.
    pub(crate) fn schedule(&self, id: &ObjectId, ns: &Arc<NamespaceEntry>, state: AlarmState) {
        let key = *id.bytes();
        let old = self.entries.borrow_mut().insert(
            key,
            Pending {
                id: id.clone(),
                ns: ns.clone(),
                state,
            },
        );
        let mut order = self.order.borrow_mut();
        if let Some(old) = old {
            order.remove(&(old.state.next_ms, key));
        }
        order.insert((state.next_ms, key));
        drop(order);
        self.wake.notify_one();
    }

    pub(crate) fn cancel(&self, key: &[u8; 32]) {
        let old = self.entries.borrow_mut().remove(key);
        if let Some(old) = old {
            self.order.borrow_mut().remove(&(old.state.next_ms, *key));
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
            let (tx, rx) = oneshot::channel();
            exec.dispatch(Envelope {
                ns: p.ns.clone(),
                id: p.id.clone(),
                event: Event::Alarm {
                    scheduled_time: p.state.scheduled_ms,
                    retry_count: p.state.retry_count,
                },
                reply: Some(tx),
            });
            crate::executor::spawn_local(watch(self.clone(), exec.cfg(), p, rx));
        }
    }
}

/// Waits for the verdict of one alarm event; reschedules the alarm if there was none.
async fn watch(
    alarms: Rc<AlarmScheduler>,
    cfg: Arc<RuntimeConfig>,
    sent: Pending,
    rx: oneshot::Receiver<Result<Reply, ObjectError>>,
) {
    let err = match rx.await {
        // The handler ran and its outcome (cleared, or a retry written) is in storage.
        Ok(Ok(_)) => return,
        Ok(Err(e)) => e,
        // The runtime is shutting down: storage still holds the alarm for the next start.
        Err(_) => return,
    };
    if alarms.entries.borrow().contains_key(sent.id.bytes()) {
        // A newer durable change of the slot already told the scheduler what to do.
        return;
    }
    let AlarmState {
        scheduled_ms,
        retry_count,
        ..
    } = sent.state;
    if retry_count >= cfg.alarm_max_retries {
        tracing::error!(object = %sent.id, retry_count, error = %err, "alarm run ended without a verdict; giving up until the next start");
        return;
    }
    let delay = retry_delay(&cfg, retry_count);
    tracing::warn!(object = %sent.id, retry_count, ?delay, error = %err, "alarm run ended without a verdict; retrying");
    alarms.schedule(
        &sent.id,
        &sent.ns,
        AlarmState {
            scheduled_ms,
            retry_count: retry_count + 1,
            next_ms: now_ms().saturating_add(delay.as_millis() as i64),
        },
    );
}

fn retry_delay(cfg: &RuntimeConfig, failed_attempt: u32) -> Duration {
    cfg.alarm_retry_base
        .saturating_mul(1u32.checked_shl(failed_attempt).unwrap_or(u32::MAX))
}

/// Runs one alarm event on an instance (see the module docs for the protocol). `Ok` means a
/// verdict is in storage (cleared, retry recorded, or nothing to run); `Err` means none was
/// reached and the scheduler must try again.
pub(crate) fn run_alarm(
    ctx: ActorContext,
    actor: Rc<dyn Actor>,
    scheduled_time: i64,
    retry_count: u32,
) -> LocalBoxFuture<'static, Result<Reply, ActorError>> {
    Box::pin(async move {
        let inner = &ctx.inner;
        let storage = ctx.storage();
        match storage.alarm_state().await? {
            Some(s) if s.scheduled_ms == scheduled_time => {}
            // Replaced (the scheduler has the new time) or deleted: nothing to run.
            _ => return Ok(Reply::Alarm),
        }
        inner.running_alarm.set(Some(scheduled_time));
        let result = actor
            .alarm(AlarmInfo {
                scheduled_time,
                retry_count,
                is_retry: retry_count > 0,
            })
            .await;
        inner.running_alarm.set(None);
        // Whether the slot still holds this alarm, i.e. the handler did not set a new one.
        let still_ours = matches!(
            storage.alarm_state().await?,
            Some(s) if s.scheduled_ms == scheduled_time
        );
        match result {
            Ok(()) => {
                if still_ours {
                    storage.delete_alarm()?;
                }
                // Until clearing the slot is durable there is no verdict: if this fails (the
                // object is reset), the scheduler runs the alarm again.
                storage.sync().await?;
                Ok(Reply::Alarm)
            }
            Err(e) if still_ours && retry_count < inner.cfg.alarm_max_retries => {
                let delay = retry_delay(&inner.cfg, retry_count);
                tracing::warn!(object = %inner.id, retry_count, ?delay, error = %e, "alarm handler failed; retrying");
                storage.set_alarm_state(
                    AlarmState {
                        scheduled_ms: scheduled_time,
                        retry_count: retry_count + 1,
                        next_ms: now_ms().saturating_add(delay.as_millis() as i64),
                    },
                    WriteOptions::default(),
                )?;
                Ok(Reply::Alarm)
            }
            Err(e) => {
                if still_ours {
                    tracing::error!(object = %inner.id, retry_count, error = %e, "alarm handler failed; giving up");
                    storage.delete_alarm()?;
                }
                Ok(Reply::Alarm)
            }
        }
    })
}
