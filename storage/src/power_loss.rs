//! Power-loss simulation for crash tests.
//!
//! `kill -9` keeps the kernel's page cache, so after it every byte a process had written is
//! still there, synced or not. A power cut loses what was not synced. To test for that, a store
//! opened with [`crate::StoreTuning::sync_log`] logs, after every completed `fdatasync` of the
//! journal, which journal file it synced and how many bytes the sync covered. After killing the
//! process, [`cut_journals`] turns the directory into what a power cut at that moment could
//! leave behind: every journal is cut back to what a sync covered, and random garbage (torn
//! writes, stale blocks) follows the cut.
//!
//! Which journal keeps what: fjall syncs a journal completely before it rotates to the next
//! one, so journals older than the last one the log names are kept whole; the last one named
//! is cut to the length logged; newer ones (created after the last logged sync) keep nothing.

use std::io::Write;
use std::path::Path;

use crate::commit::SYNC_LOG_FILE;

/// What [`cut_journals`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CutReport {
    /// The journal named by the last log entry and the length it was cut to.
    pub last_synced: Option<(u64, u64)>,
    /// Journals that were cut.
    pub journals_cut: usize,
}

/// Cuts every journal in `dir` back to what the last logged `fdatasync` covered, appends
/// `0..=max_garbage` random bytes (from `seed`) after each cut, and removes the sync log so the
/// next run starts a new one. Only for a store that is not open.
pub fn cut_journals(dir: &Path, seed: u64, max_garbage: usize) -> std::io::Result<CutReport> {
    let log_path = dir.join(SYNC_LOG_FILE);
    let log = std::fs::read_to_string(&log_path)?;
    // The last complete line: a kill can tear the line being written.
    let last = log
        .lines()
        .filter(|l| !l.is_empty())
        .filter_map(|l| {
            let (j, n) = l.split_once(' ')?;
            Some((j.parse::<u64>().ok()?, n.parse::<u64>().ok()?))
        })
        .next_back();
    let mut report = CutReport {
        last_synced: last,
        ..CutReport::default()
    };
    let mut rng = XorShift(seed | 1);
    for e in std::fs::read_dir(dir)? {
        let path = e?.path();
        let Some(n) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".jnl"))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        let keep = match last {
            Some((j, _)) if n < j => continue,
            Some((j, len)) if n == j => len,
            _ => 0,
        };
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)?
            .set_len(keep)?;
        let garbage: Vec<u8> = (0..rng.below(max_garbage as u64 + 1))
            .map(|_| rng.next() as u8)
            .collect();
        let mut f = std::fs::OpenOptions::new().append(true).open(&path)?;
        f.write_all(&garbage)?;
        f.sync_all()?;
        report.journals_cut += 1;
    }
    std::fs::remove_file(&log_path)?;
    Ok(report)
}

/// A small deterministic generator: the cut must be reproducible from the test's seed.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }
}
