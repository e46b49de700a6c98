//! Policy routing that delivers intercepted (marked) packets locally:
//! `fwmark MARK/MARK lookup TABLE` plus `local default dev lo table TABLE`, for IPv4 and
//! IPv6, installed and removed through rtnetlink (no `ip` processes).

use std::net::{Ipv4Addr, Ipv6Addr};

use anyhow::{Context, Result};
use futures::TryStreamExt;
use netlink_packet_route::{
    AddressFamily,
    route::{RouteMessage, RouteProtocol, RouteScope, RouteType},
    rule::{RuleAction, RuleAttribute, RuleMessage},
};
use rtnetlink::{Handle, IpVersion, RouteMessageBuilder};

#[derive(Debug, Clone, Copy)]
pub struct Routing {
    pub mark: u32,
    pub table: u32,
    pub priority: u32,
}

/// A netlink connection whose background task ends with the handle.
pub async fn connect() -> Result<Handle> {
    let (conn, handle, _) = rtnetlink::new_connection().context("cannot open rtnetlink socket")?;
    tokio::spawn(conn);
    Ok(handle)
}

impl Routing {
    fn is_ours(&self, rule: &RuleMessage) -> bool {
        let (mut mark, mut mask, mut prio, mut table) = (None, None, None, None);
        for attr in &rule.attributes {
            match attr {
                RuleAttribute::FwMark(v) => mark = Some(*v),
                RuleAttribute::FwMask(v) => mask = Some(*v),
                RuleAttribute::Priority(v) => prio = Some(*v),
                RuleAttribute::Table(v) => table = Some(*v),
                _ => {}
            }
        }
        let table = table.unwrap_or(u32::from(rule.header.table));
        mark == Some(self.mark)
            && mask == Some(self.mark)
            && prio == Some(self.priority)
            && table == self.table
            && rule.header.action == RuleAction::ToTable
    }

    async fn our_rules(&self, handle: &Handle, version: IpVersion) -> Result<Vec<RuleMessage>> {
        let rules: Vec<RuleMessage> = handle
            .rule()
            .get(version)
            .execute()
            .try_collect()
            .await
            .context("cannot list routing rules")?;
        Ok(rules.into_iter().filter(|r| self.is_ours(r)).collect())
    }

    fn local_route(&self, family: AddressFamily, lo: u32) -> RouteMessage {
        match family {
            AddressFamily::Inet6 => RouteMessageBuilder::<Ipv6Addr>::new()
                .destination_prefix(Ipv6Addr::UNSPECIFIED, 0)
                .output_interface(lo)
                .table_id(self.table)
                .kind(RouteType::Local)
                .scope(RouteScope::Host)
                .protocol(RouteProtocol::Static)
                .build(),
            _ => RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(Ipv4Addr::UNSPECIFIED, 0)
                .output_interface(lo)
                .table_id(self.table)
                .kind(RouteType::Local)
                .scope(RouteScope::Host)
                .protocol(RouteProtocol::Static)
                .build(),
        }
    }

    /// Installs rule and route for both families. Idempotent: a restarted daemon finds
    /// them in place (they survive a crash) and leaves them as they are.
    pub async fn install(&self, handle: &Handle) -> Result<()> {
        let lo = loopback_index(handle).await?;
        for (version, family) in [
            (IpVersion::V4, AddressFamily::Inet),
            (IpVersion::V6, AddressFamily::Inet6),
        ] {
            handle
                .route()
                .add(self.local_route(family, lo))
                .replace()
                .execute()
                .await
                .with_context(|| {
                    format!(
                        "cannot add local default route to table {} ({family:?})",
                        self.table
                    )
                })?;
            if self.our_rules(handle, version.clone()).await?.is_empty() {
                // The action must be explicit: rtnetlink's default is UNSPEC, which the
                // kernel accepts but never routes with.
                let mut req = handle
                    .rule()
                    .add()
                    .fw_mark(self.mark)
                    .table_id(self.table)
                    .priority(self.priority)
                    .action(RuleAction::ToTable);
                req.message_mut()
                    .attributes
                    .push(RuleAttribute::FwMask(self.mark));
                let result = match version {
                    IpVersion::V4 => req.v4().execute().await,
                    IpVersion::V6 => req.v6().execute().await,
                };
                result.with_context(|| {
                    format!(
                        "cannot add rule fwmark {:#x}/{:#x} lookup {} ({family:?})",
                        self.mark, self.mark, self.table
                    )
                })?;
            }
        }
        Ok(())
    }

    /// Removes what `install` added; missing pieces are not an error.
    pub async fn remove(&self, handle: &Handle) -> Result<()> {
        let lo = loopback_index(handle).await?;
        for (version, family) in [
            (IpVersion::V4, AddressFamily::Inet),
            (IpVersion::V6, AddressFamily::Inet6),
        ] {
            for rule in self.our_rules(handle, version).await? {
                handle
                    .rule()
                    .del(rule)
                    .execute()
                    .await
                    .with_context(|| format!("cannot delete fwmark rule ({family:?})"))?;
            }
            if let Err(e) = handle
                .route()
                .del(self.local_route(family, lo))
                .execute()
                .await
                && !is_not_found(&e)
            {
                return Err(e).with_context(|| {
                    format!(
                        "cannot delete local route from table {} ({family:?})",
                        self.table
                    )
                });
            }
        }
        Ok(())
    }
}

fn is_not_found(e: &rtnetlink::Error) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(m)
        if m.raw_code() == -libc::ESRCH || m.raw_code() == -libc::ENOENT)
}

async fn loopback_index(handle: &Handle) -> Result<u32> {
    let link = handle
        .link()
        .get()
        .match_name("lo".to_string())
        .execute()
        .try_next()
        .await
        .context("cannot look up the loopback interface")?
        .context("no loopback interface in this network namespace")?;
    Ok(link.header.index)
}
