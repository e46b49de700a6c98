//! Structured logs: human-readable on a terminal, JSON otherwise (journald, files).

use std::io::IsTerminal;

use clap::ValueEnum;
use tracing::{Event, Level, Subscriber, field::Field};
use tracing_subscriber::{
    EnvFilter,
    layer::{Context, Layer, SubscriberExt},
    util::SubscriberInitExt,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Auto,
    Text,
    Json,
}

pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_env("SSHGW_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let json = match format {
        LogFormat::Auto => !std::io::stderr().is_terminal(),
        LogFormat::Text => false,
        LogFormat::Json => true,
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder
            .json()
            .flatten_event(true)
            .finish()
            .with(KnownClientRequests)
            .init();
    } else {
        builder
            .with_ansi(std::io::stderr().is_terminal())
            .finish()
            .with(KnownClientRequests)
            .init();
    }
}

/// Channel requests that well-known clients send on every connection and that a server
/// may ignore (RFC 4254 §5.4: they are answered with a failure, as before). russh warns
/// about every unknown request; these are not worth a warning.
///
/// `simple@putty.projects.tartarus.org`: PuTTY's hint that it will open no other channel.
pub const KNOWN_CHANNEL_REQUESTS: &[&str] = &["simple@putty.projects.tartarus.org"];

/// Drops russh's `unknown channel request NAME` warning for [`KNOWN_CHANNEL_REQUESTS`] only;
/// every other warning (an unknown request from anyone else included) passes.
struct KnownClientRequests;

impl<S: Subscriber> Layer<S> for KnownClientRequests {
    fn event_enabled(&self, event: &Event<'_>, _ctx: Context<'_, S>) -> bool {
        // russh logs through `log`: such a record's real target is in its fields.
        let normalized = tracing_log::NormalizeEvent::normalized_metadata(event);
        let meta = normalized.as_ref().unwrap_or_else(|| event.metadata());
        if *meta.level() != Level::WARN || !meta.target().starts_with("russh::server") {
            return true;
        }
        let mut message = Message(None);
        event.record(&mut message);
        !message.0.is_some_and(|text| {
            text.strip_prefix("unknown channel request ")
                .is_some_and(|name| KNOWN_CHANNEL_REQUESTS.contains(&name))
        })
    }
}

/// The formatted `message` field of an event.
struct Message(Option<String>);

impl tracing::field::Visit for Message {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0 = Some(format!("{value:?}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn only_known_client_requests_are_quiet() {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(EnvFilter::new("info"))
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish()
            .with(KnownClientRequests);
        tracing::subscriber::with_default(subscriber, || {
            let putty = "simple@putty.projects.tartarus.org";
            // As russh emits it: a `log` record, converted by tracing-log.
            tracing_log::format_trace(
                &log::Record::builder()
                    .level(log::Level::Warn)
                    .target("russh::server::encrypted")
                    .args(format_args!("unknown channel request {putty}"))
                    .build(),
            )
            .unwrap();
            tracing::warn!(target: "russh::server::encrypted", "unknown channel request {putty}");
            let other = "evil@example.com";
            tracing::warn!(target: "russh::server::encrypted", "unknown channel request {other}");
            tracing::warn!(target: "sshgw::relay", "unknown channel request {putty}");
            tracing::warn!(target: "russh::server::encrypted", "something else");
        });
        let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[0].contains("evil@example.com"), "{text}");
        assert!(lines[1].contains("sshgw::relay"), "{text}");
        assert!(lines[2].contains("something else"), "{text}");
    }
}
