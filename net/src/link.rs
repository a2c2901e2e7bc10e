//! Link state through rtnetlink: owner alias, address, up, delete, list.

use futures::TryStreamExt as _;
use rtnetlink::packet_route::link::{LinkAttribute, LinkMessage};
use rtnetlink::{Handle, LinkUnspec};
use std::net::Ipv4Addr;

use crate::Error;

/// A netlink connection (one per NetManager; cheap to clone).
#[derive(Clone)]
pub struct Links {
    handle: Handle,
}

/// A link as the reaper sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkInfo {
    pub index: u32,
    pub name: String,
    pub alias: Option<String>,
}

fn nl(what: &str, name: &str, e: rtnetlink::Error) -> Error {
    Error::Netlink { what: format!("{what} {name}"), message: e.to_string() }
}

fn info(m: &LinkMessage) -> LinkInfo {
    let mut li = LinkInfo { index: m.header.index, name: String::new(), alias: None };
    for a in &m.attributes {
        match a {
            LinkAttribute::IfName(n) => li.name = n.clone(),
            LinkAttribute::IfAlias(a) => li.alias = Some(a.clone()),
            _ => {}
        }
    }
    li
}

impl Links {
    /// Opens a netlink socket in the current network namespace. Needs a
    /// tokio runtime.
    pub fn open() -> Result<Links, Error> {
        let (conn, handle, _) =
            rtnetlink::new_connection().map_err(|e| Error::Netlink { what: "open netlink socket".into(), message: e.to_string() })?;
        tokio::spawn(conn);
        Ok(Links { handle })
    }

    pub async fn get(&self, name: &str) -> Result<Option<LinkInfo>, Error> {
        let mut s = self.handle.link().get().match_name(name.to_string()).execute();
        match s.try_next().await {
            Ok(Some(m)) => Ok(Some(info(&m))),
            Ok(None) => Ok(None),
            // ENODEV: no such link.
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(None),
            Err(e) => Err(nl("get link", name, e)),
        }
    }

    pub async fn list(&self) -> Result<Vec<LinkInfo>, Error> {
        let mut s = self.handle.link().get().execute();
        let mut out = Vec::new();
        while let Some(m) = s.try_next().await.map_err(|e| nl("list links", "", e))? {
            out.push(info(&m));
        }
        Ok(out)
    }

    /// Marks the link as ours, gives it the gateway address and brings it
    /// up. Idempotent: an address already present is fine.
    pub async fn configure(&self, index: u32, name: &str, alias: &str, gateway: Ipv4Addr, prefix: u8) -> Result<(), Error> {
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).alias(alias).up().build())
            .execute()
            .await
            .map_err(|e| nl("set up", name, e))?;
        match self.handle.address().add(index, gateway.into(), prefix).execute().await {
            Ok(()) => Ok(()),
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::EEXIST => Ok(()),
            Err(e) => Err(nl("add address to", name, e)),
        }
    }

    pub async fn delete(&self, index: u32, name: &str) -> Result<(), Error> {
        match self.handle.link().del(index).execute().await {
            Ok(()) => Ok(()),
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(()),
            Err(e) => Err(nl("delete", name, e)),
        }
    }
}
