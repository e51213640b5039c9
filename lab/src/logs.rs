//! A `log` logger for tests that check what the crates under test log: it keeps
//! every record at warning level or above, per process.

use std::sync::{Mutex, Once};

static RECORDS: Mutex<Vec<(log::Level, String)>> = Mutex::new(Vec::new());
static INIT: Once = Once::new();

struct Keeper;

impl log::Log for Keeper {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::Level::Warn
    }

    fn log(&self, record: &log::Record<'_>) {
        if self.enabled(record.metadata()) {
            let line = format!("{}", record.args());
            eprintln!("[{}] {line}", record.level());
            RECORDS
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push((record.level(), line));
        }
    }

    fn flush(&self) {}
}

/// Installs the logger (once per process) and forgets what was logged so far.
pub fn capture() {
    INIT.call_once(|| {
        if log::set_logger(&Keeper).is_ok() {
            log::set_max_level(log::LevelFilter::Warn);
        }
    });
    RECORDS.lock().unwrap_or_else(|p| p.into_inner()).clear();
}

/// The records at `level` or more severe since [`capture`], and forgets them.
pub fn take(level: log::Level) -> Vec<String> {
    let mut all = RECORDS.lock().unwrap_or_else(|p| p.into_inner());
    let out = all
        .iter()
        .filter(|(l, _)| *l <= level)
        .map(|(_, m)| m.clone())
        .collect();
    all.clear();
    out
}
