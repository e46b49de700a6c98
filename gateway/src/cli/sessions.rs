//! `sshgw sessions [--active] [--since D] [--user EMAIL] [--device ID] [--destination A]
//! [--json]`, `sessions show ID`, `sessions kill ID`; with `--central`, the same from the
//! central index, plus `--router` and `--file GLOB`.

use anyhow::{Context, Result};
use clap::{Args, Subcommand};

use super::{
    Refused, Target,
    escape::{escape, or_dash},
    table,
};
use crate::{
    central::search,
    control::api::SessionQuery,
    sessions::{SessionRecord, format_time},
};

#[derive(Args)]
pub struct ListArgs {
    /// Only sessions in progress.
    #[arg(long)]
    active: bool,
    /// Only sessions started within this long, e.g. 30m, 8h, 2d.
    #[arg(long)]
    since: Option<String>,
    /// Only sessions of this user (email).
    #[arg(long)]
    user: Option<String>,
    /// Only sessions of this device id.
    #[arg(long)]
    device: Option<String>,
    /// Only sessions to this address (any port) or address:port.
    #[arg(long)]
    destination: Option<String>,
    /// Read the central PostgreSQL index (`[central]` in the config) instead of the daemon.
    #[arg(long)]
    central: bool,
    /// With --central: only sessions of this router.
    #[arg(long, requires = "central")]
    router: Option<String>,
    /// With --central: only sessions with a file operation on a path matching this glob
    /// (`*`, `?`).
    #[arg(long, requires = "central")]
    file: Option<String>,
    /// At most this many sessions, newest first.
    #[arg(long, default_value_t = 1000)]
    limit: u32,
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    target: Target,
}

#[derive(Subcommand)]
pub enum SessionsCommand {
    /// One session with its channels.
    Show {
        id: String,
        #[arg(long)]
        json: bool,
        /// From the central index, with its recordings' object keys.
        #[arg(long)]
        central: bool,
        /// With --central: the router, when several have this session id.
        #[arg(long, requires = "central")]
        router: Option<String>,
        #[command(flatten)]
        target: Target,
    },
    /// End a live session: both legs close and the user is told why.
    Kill {
        id: String,
        #[command(flatten)]
        target: Target,
    },
}

pub fn list(args: ListArgs) -> Result<()> {
    if args.central {
        return list_central(args);
    }
    let query = SessionQuery {
        active: args.active,
        since: args.since,
        user: args.user,
        device: args.device,
        destination: args.destination,
    };
    let answer = super::ask(&args.target, |c| async move { c.sessions(&query).await })?;
    if args.json {
        return super::print_json(&answer.json);
    }
    let sessions = answer.value()?.sessions;
    let rows: Vec<Vec<String>> = sessions.iter().map(session_row).collect();
    table::print(&HEADERS, &rows);
    Ok(())
}

const HEADERS: [&str; 10] = [
    "ID",
    "STARTED",
    "DURATION",
    "USER",
    "DEVICE",
    "DESTINATION",
    "LOGIN",
    "DECISION",
    "POLICY",
    "CLOSED",
];

/// `sessions --central`: the same columns, after the router's.
fn list_central(args: ListArgs) -> Result<()> {
    let since = match &args.since {
        Some(text) => {
            let d =
                crate::util::duration::parse(text, &SINCE).map_err(|e| Refused(e.to_string()))?;
            Some(crate::sessions::now_micros() - d.as_micros() as i64)
        }
        None => None,
    };
    let destination = match &args.destination {
        Some(d) => Some(crate::sessions::destination_match(d).map_err(Refused)?),
        None => None,
    };
    let query = search::Query {
        since,
        user: args.user.clone(),
        device: args.device.clone(),
        destination,
        active: args.active,
        router: args.router.clone(),
        file: args.file.clone(),
        limit: args.limit,
        ..Default::default()
    };
    let config = central_config(&args.target)?;
    let (runtime, client) = super::central::connect(&config)?;
    let sessions = runtime.block_on(search::list(&client, &query))?;
    if args.json {
        return super::print_json(&serde_json::json!({ "sessions": sessions }));
    }
    let rows: Vec<Vec<String>> = sessions
        .iter()
        .map(|c| {
            let mut row = vec![c.router_id.clone()];
            row.extend(session_row(&c.session));
            row
        })
        .collect();
    let mut headers = vec!["ROUTER"];
    headers.extend(HEADERS);
    table::print(&headers, &rows);
    Ok(())
}

/// How far back `--central --since` may reach: ten years.
const SINCE: crate::util::duration::Field = crate::util::duration::Field {
    name: "since",
    max: std::time::Duration::from_secs(10 * 366 * 86_400),
    zero: "leave --since out for no limit",
};

/// The config `--central` reads `[central]` from.
fn central_config(target: &Target) -> Result<crate::config::Config> {
    target
        .config()?
        .ok_or_else(|| Refused("--central needs --config (for [central])".into()).into())
}

fn session_row(s: &SessionRecord) -> Vec<String> {
    vec![
        s.id.clone(),
        format_time(s.started_at),
        match (s.duration_ms, &s.close_reason) {
            (Some(d), _) => format!("{:.1}s", d as f64 / 1000.0),
            // Interrupted by a daemon crash: the end is unknown.
            (None, Some(_)) => "?".into(),
            (None, None) => "live".into(),
        },
        s.email.clone().unwrap_or_else(|| "-".into()),
        s.device_id.clone().unwrap_or_else(|| "-".into()),
        s.destination.clone(),
        s.login.clone().unwrap_or_else(|| "-".into()),
        s.decision.to_string(),
        s.policy_id.clone().unwrap_or_else(|| "-".into()),
        s.close_reason.clone().unwrap_or_else(|| "-".into()),
    ]
}

pub fn run(command: SessionsCommand) -> Result<()> {
    match command {
        SessionsCommand::Show {
            id,
            central: true,
            router,
            json,
            target,
        } => show_central(&id, router.as_deref(), json, &target),
        SessionsCommand::Show {
            id, json, target, ..
        } => {
            let answer = super::ask(&target, |c| async move { c.session(&id).await })?;
            if json {
                return super::print_json(&answer.json);
            }
            let s = answer.value()?;
            print_session(&s);
            print_channels(&s);
            print_file_ops(&s);
            Ok(())
        }
        SessionsCommand::Kill { id, target } => {
            let key = &id;
            super::ask(&target, |c| async move { c.kill(key).await })?;
            println!("killed session {}", escape(&id));
            Ok(())
        }
    }
}

/// `sessions show ID --central`: the session, its router and its objects.
fn show_central(id: &str, router: Option<&str>, json: bool, target: &Target) -> Result<()> {
    let config = central_config(target)?;
    let (runtime, client) = super::central::connect(&config)?;
    let found = runtime
        .block_on(search::show(&client, id, router))?
        .with_context(|| format!("no session {id:?} in the central index"))?;
    if json {
        return super::print_json(&found);
    }
    println!("router:        {}", escape(&found.router_id));
    print_session(&found.session);
    if let Some(object) = &found.record_object {
        println!("record object: {}", escape(&object.key));
    }
    print_channels(&found.session);
    print_file_ops(&found.session);
    Ok(())
}

/// The session's own fields, one per line, every value escaped.
fn print_session(s: &SessionRecord) {
    let opt = |v: &Option<String>| or_dash(v.as_deref()).into_owned();
    println!("session:       {}", escape(&s.id));
    println!("user:          {}", opt(&s.email));
    println!("device:        {}", opt(&s.device_id));
    println!("source:        {}", escape(&s.source));
    println!("destination:   {}", escape(&s.destination));
    println!("login:         {}", opt(&s.login));
    println!(
        "decision:      {} ({})",
        escape(s.decision.as_str()),
        opt(&s.policy_id)
    );
    println!("started:       {}", format_time(s.started_at));
    println!(
        "ended:         {}",
        match (s.ended_at, &s.close_reason) {
            (Some(t), _) => format_time(t),
            (None, Some(_)) => "unknown (interrupted)".into(),
            (None, None) => "live".into(),
        }
    );
    println!(
        "bytes:         {} from client, {} from server",
        s.bytes_from_client, s.bytes_from_server
    );
    println!("closed:        {}", opt(&s.close_reason));
    println!("certificate:   serial {}", opt(&s.cert_serial));
    println!("server key:    {}", opt(&s.upstream_host_key));
}

fn print_channels(s: &SessionRecord) {
    if s.channels.is_empty() {
        return;
    }
    println!();
    let rows: Vec<Vec<String>> = s
        .channels
        .iter()
        .map(|c| {
            vec![
                c.channel.to_string(),
                c.kind.to_string(),
                c.command.clone().unwrap_or_else(|| "-".into()),
                format_time(c.started_at),
                match (&c.exit_status, &c.exit_signal) {
                    (_, Some(sig)) => format!("signal {sig}"),
                    (Some(code), None) => code.to_string(),
                    (None, None) if c.ended_at.is_none() => "running".into(),
                    (None, None) => "-".into(),
                },
                c.recording.clone().unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    table::print(
        &["CHANNEL", "KIND", "COMMAND", "STARTED", "EXIT", "RECORDING"],
        &rows,
    );
}

fn print_file_ops(s: &SessionRecord) {
    if s.file_ops.is_empty() {
        return;
    }
    println!();
    let rows: Vec<Vec<String>> = s
        .file_ops
        .iter()
        .map(|f| {
            vec![
                f.channel.to_string(),
                format!("{} {}", f.protocol, f.op),
                f.path.clone(),
                f.target.clone().unwrap_or_else(|| "-".into()),
                f.flags.clone().unwrap_or_else(|| "-".into()),
                f.bytes_read.to_string(),
                f.bytes_written.to_string(),
                if f.denied {
                    format!("DENIED: {}", f.status)
                } else {
                    f.status.clone()
                },
            ]
        })
        .collect();
    table::print(
        &[
            "CHANNEL",
            "OPERATION",
            "PATH",
            "TARGET",
            "FLAGS",
            "READ",
            "WRITTEN",
            "STATUS",
        ],
        &rows,
    );
}
