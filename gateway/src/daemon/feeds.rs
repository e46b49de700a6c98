//! The outbox's consumers the config asks for: the central shipper and the SIEM
//! exporters. Built before anything answers, so a bad URL, password file or CA file stops
//! the start instead of leaving a daemon that never ships.

use std::sync::Arc;

use anyhow::{Context as _, Result};

use super::tasks::Tasks;
use crate::{
    central::{connect::Target, shipper::Shipper},
    config::Config,
    export::{Exporter, Sink, event::Redaction, otlp::OtlpSink, syslog::SyslogSink},
    sessions::{
        outbox::{Consumers, Delivery, consumer},
        store::SessionStore,
    },
};

/// What will feed from the outbox.
pub struct Feeds {
    central: Option<(Target, u32)>,
    otlp: Option<OtlpSink>,
    syslog: Option<SyslogSink>,
    router_id: String,
    redact: Redaction,
    pub consumers: Consumers,
}

impl Feeds {
    pub fn from_config(config: &Config) -> Result<Self> {
        let export = &config.export;
        let any = config.central.is_some() || export.otlp.is_some() || export.syslog.is_some();
        if any && config.router_id().is_none() {
            anyhow::bail!(
                "cluster.router_id: required once [central] or [export] is set (it is in every row and event id)"
            );
        }
        let router_id = config.router_id().unwrap_or_default().to_owned();
        let central = match &config.central {
            Some(c) => Some((Target::from_config(c).context("[central]")?, c.batch_rows)),
            None => None,
        };
        let otlp = match &export.otlp {
            Some(o) => Some(OtlpSink::new(o, &router_id).context("[export.otlp]")?),
            None => None,
        };
        let syslog = match &export.syslog {
            Some(s) => Some(SyslogSink::new(s, &router_id).context("[export.syslog]")?),
            None => None,
        };
        let delivery = |on: bool| on.then(|| Arc::new(Delivery::default()));
        let consumers = Consumers {
            central: delivery(central.is_some()),
            otlp: delivery(otlp.is_some()),
            syslog: delivery(syslog.is_some()),
        };
        if let Some((target, _)) = &central {
            tracing::info!(
                role = target.user(),
                router_id,
                "central: shipping the outbox to PostgreSQL"
            );
        }
        Ok(Feeds {
            central,
            otlp,
            syslog,
            router_id,
            redact: Redaction::of(export),
            consumers,
        })
    }

    /// Starts one task per consumer.
    pub fn spawn(self, tasks: &mut Tasks, store: &SessionStore) {
        let Feeds {
            central,
            otlp,
            syslog,
            router_id,
            redact,
            consumers,
        } = self;
        if let (Some((target, batch_rows)), Some(delivery)) = (central, consumers.central) {
            let shipper = Shipper {
                target,
                router_id: router_id.clone(),
                store: store.clone(),
                batch_rows,
                delivery,
            };
            tasks.service("central shipper", shipper.run());
        }
        let exporter = |name, sink, delivery| Exporter {
            name,
            sink,
            router_id: router_id.clone(),
            redact,
            store: store.clone(),
            delivery,
        };
        if let (Some(sink), Some(delivery)) = (otlp, consumers.otlp) {
            let e = exporter(consumer::OTLP, Sink::Otlp(sink), delivery);
            tasks.service("OTLP exporter", e.run());
        }
        if let (Some(sink), Some(delivery)) = (syslog, consumers.syslog) {
            let e = exporter(consumer::SYSLOG, Sink::Syslog(sink), delivery);
            tasks.service("syslog exporter", e.run());
        }
    }
}
