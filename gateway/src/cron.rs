//! Cron triggers: one task per `(worker, pattern)` that sleeps until the pattern's next time
//! and delivers a scheduled event, as Cloudflare does (UTC, no catch-up for missed times).

use chrono::{DateTime, Timelike, Utc};
use cinder_stateless::Host;
use croner::Cron;
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
            let mut fired: Option<DateTime<Utc>> = None;
            loop {
                let now = chrono::Utc::now();
                let next = match next_firing(&cron, now, fired) {
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
                fired = Some(next);
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

/// The next time to fire: after `now`, and strictly after the last firing. The monotonic sleep
/// may end while the wall clock still reads a little before the time it slept for; counting
/// from the wall clock alone would then find that same time again and fire it twice.
fn next_firing(
    cron: &Cron,
    now: DateTime<Utc>,
    fired: Option<DateTime<Utc>>,
) -> Result<DateTime<Utc>, croner::errors::CronError> {
    // croner keeps the sub-second part of its input; cron times are whole seconds.
    let now = now.with_nanosecond(0).unwrap_or(now);
    match fired {
        Some(last) if last >= now => cron.find_next_occurrence(&last, false),
        _ => cron.find_next_occurrence(&now, false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn a_lagging_wall_clock_does_not_fire_the_same_time_twice() {
        let cron = parse_cron("* * * * *").unwrap();
        let noon = Utc.with_ymd_and_hms(2026, 1, 1, 12, 0, 0).unwrap();
        // Woken for 12:00:00 while the wall clock still says 11:59:59.999.
        let lagging = noon - chrono::Duration::milliseconds(1);
        assert_eq!(next_firing(&cron, lagging, None).unwrap(), noon);
        assert_eq!(
            next_firing(&cron, lagging, Some(noon)).unwrap(),
            noon + chrono::Duration::minutes(1)
        );
        // With the clock past the last firing, the next time counts from the clock.
        let later = noon + chrono::Duration::seconds(150);
        assert_eq!(
            next_firing(&cron, later, Some(noon)).unwrap(),
            noon + chrono::Duration::minutes(3)
        );
    }
}
