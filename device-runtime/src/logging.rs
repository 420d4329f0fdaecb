//! A minimal `tracing` subscriber for the device: one line per event on stderr,
//! `<unix seconds> <LEVEL> <target>: <message> key=value…`, no spans. The full
//! `tracing-subscriber` costs more binary (and so resident memory) than a device
//! daemon that logs a few lines per update should pay; journald adds timestamps and
//! levels are enough to filter.

use std::fmt::Write as _;
use std::io::Write as _;

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata, Subscriber};

pub struct StderrLogger {
    max: Level,
}

impl StderrLogger {
    /// Installs the logger globally; a second call is a no-op.
    pub fn install(max: Level) {
        let _ = tracing::subscriber::set_global_default(StderrLogger { max });
    }
}

struct Line(String);

impl Visit for Line {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.0, " {value:?}");
        } else {
            let _ = write!(self.0, " {}={value:?}", field.name());
        }
    }
}

/// Formats one event; pure so the format is tested.
pub fn format_line(secs: u64, level: &Level, target: &str, fields: &str) -> String {
    format!("{secs} {level:>5} {target}:{fields}\n")
}

impl Subscriber for StderrLogger {
    fn enabled(&self, m: &Metadata<'_>) -> bool {
        m.level() <= &self.max
    }
    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }
    fn record(&self, _: &Id, _: &Record<'_>) {}
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, e: &Event<'_>) {
        let mut line = Line(String::new());
        e.record(&mut line);
        let m = e.metadata();
        let text = format_line(crate::lifecycle::now_secs(), m.level(), m.target(), &line.0);
        // One write per line so concurrent lines do not interleave.
        let _ = std::io::stderr().lock().write_all(text.as_bytes());
    }
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_format() {
        assert_eq!(
            format_line(
                7,
                &Level::INFO,
                "device_runtime::daemon",
                " progress rev=\"v1\" status=DONE"
            ),
            "7  INFO device_runtime::daemon: progress rev=\"v1\" status=DONE\n"
        );
    }
}
