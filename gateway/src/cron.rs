//! Cron triggers: one task per `(worker, pattern)` that sleeps until the pattern's next time
//! and delivers a scheduled event, as Cloudflare does (UTC, no catch-up for missed times).

use cinder_stateless::Host;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::config::parse_cron;

/// Starts the triggers of every worker; they stop when `stop` turns true.
pub fn spawn_all(
    host: &Host,
    triggers: Vec<(String, String)>,
    stop: watch::Receiver<bool>,
) -> JoinSet<()> {
    let mut set = JoinSet::new();
    for (worker, pattern) in triggers {
        let cron = match parse_cron(&pattern) {
            Ok(c) => c,
            Err(e) => {
                // Patterns were validated when the config was read; keep running the others.
                tracing::error!(%worker, %pattern, "invalid cron trigger: {e}");
                continue;
            }
        };
        let host = host.clone();
        let mut stop = stop.clone();
        set.spawn(async move {
            tracing::info!(%worker, %pattern, "cron trigger armed");
            loop {
                let now = chrono::Utc::now();
                let next = match cron.find_next_occurrence(&now, false) {
                    Ok(next) => next,
                    Err(e) => {
                        tracing::warn!(%worker, %pattern, "cron trigger has no next time: {e}");
                        return;
                    }
                };
                let wait = (next - now).to_std().unwrap_or_default();
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
                let at = next.timestamp_millis();
                match host.scheduled(&worker, &pattern, at).await {
                    Ok(()) => tracing::info!(%worker, %pattern, "scheduled event ran"),
                    Err(e) => tracing::error!(%worker, %pattern, "scheduled event failed: {e}"),
                }
            }
        });
    }
    set
}
