//! nf_tables over netlink: one atomic batch (NFNL_MSG_BATCH_BEGIN ...
//! BATCH_END) of set, set-element and rule messages, sent on a socket kept
//! open for the daemon's life. The kernel applies the whole batch or none
//! of it, and answers every message (NLM_F_ACK), so a failure names the
//! message it was about.
//!
//! Only the few messages a lease change needs are built here (the full
//! table is loaded by `nft -f`); their layout is the kernel's uapi
//! (linux/netfilter/nf_tables.h, nfnetlink.h).

use std::os::fd::AsRawFd as _;

use netlink_sys::{protocols::NETLINK_NETFILTER, Socket};

use super::element::Element;
use super::TABLE;
use crate::Error;

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFT_MSG_NEWRULE: u16 = 6;
const NFT_MSG_DELRULE: u16 = 8;
const NFT_MSG_NEWSET: u16 = 9;
const NFT_MSG_GETSET: u16 = 10;
const NFT_MSG_DELSET: u16 = 11;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_DELSETELEM: u16 = 14;

const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_APPEND: u16 = 0x800;
const NLM_F_CREATE: u16 = 0x400;
const NLA_F_NESTED: u16 = 0x8000;
const NLMSG_ERROR: u16 = 2;

// Attribute numbers.
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_DATA: u16 = 2;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;
const NFTA_SET_TABLE: u16 = 1;
const NFTA_SET_NAME: u16 = 2;
const NFTA_SET_FLAGS: u16 = 3;
const NFTA_SET_KEY_TYPE: u16 = 4;
const NFTA_SET_KEY_LEN: u16 = 5;
const NFTA_SET_ID: u16 = 10;
const NFTA_SET_USERDATA: u16 = 13;
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_META_DREG: u16 = 1;
const NFTA_META_KEY: u16 = 2;
const NFTA_LOOKUP_SET: u16 = 1;
const NFTA_LOOKUP_SREG: u16 = 2;
const NFTA_IMMEDIATE_DREG: u16 = 1;
const NFTA_IMMEDIATE_DATA: u16 = 2;

const NFT_META_IIFNAME: u32 = 6;
const NFT_META_OIFNAME: u32 = 7;
const NFT_REG_VERDICT: u32 = 0;
const NFT_REG_1: u32 = 1;
const NF_ACCEPT: u32 = 1;
/// nft's datatype number for `ifname` (what `nft list` shows as the type).
const NFT_TYPE_IFNAME: u32 = 41;
const IFNAMSIZ: u32 = 16;

/// How long the kernel may take to answer a batch before we call it lost.
const REPLY_TIMEOUT_MS: i64 = 2000;

fn nl_err(what: &str, message: impl ToString) -> Error {
    Error::Netlink { what: format!("nftables {what}"), message: message.to_string() }
}

/// A netlink attribute; `nested` ones get NLA_F_NESTED and are closed by
/// `end` once their content is written.
struct Attrs<'a> {
    buf: &'a mut Vec<u8>,
}

impl Attrs<'_> {
    fn put(&mut self, ty: u16, payload: &[u8]) {
        let len = 4 + payload.len();
        self.buf.extend_from_slice(&(len as u16).to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(payload);
        self.buf.resize(self.buf.len().next_multiple_of(4), 0);
    }

    fn str(&mut self, ty: u16, s: &str) {
        let mut b = s.as_bytes().to_vec();
        b.push(0);
        self.put(ty, &b);
    }

    fn u32(&mut self, ty: u16, v: u32) {
        self.put(ty, &v.to_be_bytes());
    }

    fn nested(&mut self, ty: u16, body: impl FnOnce(&mut Attrs<'_>)) {
        let start = self.buf.len();
        self.buf.extend_from_slice(&[0, 0]);
        self.buf.extend_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
        body(&mut Attrs { buf: self.buf });
        let len = (self.buf.len() - start) as u16;
        self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
    }

    fn expr(&mut self, name: &str, body: impl FnOnce(&mut Attrs<'_>)) {
        self.nested(NFTA_LIST_ELEM, |e| {
            e.str(NFTA_EXPR_NAME, name);
            e.nested(NFTA_EXPR_DATA, body);
        });
    }
}

/// One transaction under construction.
pub struct Batch {
    buf: Vec<u8>,
    seq: u32,
    /// What each acknowledged message did, by sequence number.
    what: Vec<(u32, String)>,
    next_set_id: u32,
}

impl Batch {
    pub fn new(first_seq: u32) -> Batch {
        let mut b = Batch { buf: Vec::with_capacity(1024), seq: first_seq, what: Vec::new(), next_set_id: 1 };
        b.message(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, libc::AF_UNSPEC as u8, NFNL_SUBSYS_NFTABLES, |_| {});
        b
    }

    pub fn is_empty(&self) -> bool {
        self.what.is_empty()
    }

    fn message(&mut self, ty: u16, flags: u16, family: u8, res_id: u16, body: impl FnOnce(&mut Attrs<'_>)) -> u32 {
        let start = self.buf.len();
        let seq = self.seq;
        self.seq = self.seq.wrapping_add(1);
        self.buf.extend_from_slice(&[0; 4]);
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(&flags.to_ne_bytes());
        self.buf.extend_from_slice(&seq.to_ne_bytes());
        self.buf.extend_from_slice(&0u32.to_ne_bytes());
        // nfgenmsg: family, version 0, resource id (big endian).
        self.buf.extend_from_slice(&[family, 0]);
        self.buf.extend_from_slice(&res_id.to_be_bytes());
        body(&mut Attrs { buf: &mut self.buf });
        let len = (self.buf.len() - start) as u32;
        self.buf[start..start + 4].copy_from_slice(&len.to_ne_bytes());
        seq
    }

    fn nft(&mut self, msg: u16, flags: u16, what: String, body: impl FnOnce(&mut Attrs<'_>)) {
        let seq = self.message((NFNL_SUBSYS_NFTABLES << 8) | msg, NLM_F_REQUEST | NLM_F_ACK | flags, libc::AF_INET as u8, 0, body);
        self.what.push((seq, what));
    }

    /// Adds (or deletes) elements of one set, in one message.
    pub fn elements(&mut self, add: bool, set: &str, elems: &[&Element]) {
        if elems.is_empty() {
            return;
        }
        let (msg, flags, verb) = if add { (NFT_MSG_NEWSETELEM, NLM_F_CREATE, "add") } else { (NFT_MSG_DELSETELEM, 0, "delete") };
        let first = elems.iter().map(|e| e.text()).next().unwrap_or_default();
        let what = format!("{verb} {} element(s) of set {set} (first: {first})", elems.len());
        self.nft(msg, flags, what, |a| {
            a.str(NFTA_SET_ELEM_LIST_TABLE, TABLE);
            a.str(NFTA_SET_ELEM_LIST_SET, set);
            a.nested(NFTA_SET_ELEM_LIST_ELEMENTS, |list| {
                for e in elems {
                    list.nested(NFTA_LIST_ELEM, |el| {
                        el.nested(NFTA_SET_ELEM_KEY, |k| k.put(NFTA_DATA_VALUE, &e.key()));
                        if let Some(data) = e.data() {
                            el.nested(NFTA_SET_ELEM_DATA, |d| d.put(NFTA_DATA_VALUE, &data));
                        }
                    });
                }
            });
        });
    }

    /// `set NAME { type ifname }`.
    pub fn new_ifname_set(&mut self, name: &str) {
        let id = self.next_set_id;
        self.next_set_id += 1;
        self.nft(NFT_MSG_NEWSET, NLM_F_CREATE, format!("create set {name}"), |a| {
            a.str(NFTA_SET_TABLE, TABLE);
            a.str(NFTA_SET_NAME, name);
            a.u32(NFTA_SET_FLAGS, 0);
            a.u32(NFTA_SET_KEY_TYPE, NFT_TYPE_IFNAME);
            a.u32(NFTA_SET_KEY_LEN, IFNAMSIZ);
            a.u32(NFTA_SET_ID, id);
            // nft's own annotation (libnftnl udata TLV): key byte order =
            // host endian; without it `nft list` cannot print the names.
            a.put(NFTA_SET_USERDATA, &[0, 4, 1, 0, 0, 0]);
        });
    }

    pub fn delete_set(&mut self, name: &str) {
        self.nft(NFT_MSG_DELSET, 0, format!("delete set {name}"), |a| {
            a.str(NFTA_SET_TABLE, TABLE);
            a.str(NFTA_SET_NAME, name);
        });
    }

    /// Deletes every rule of a chain (DELRULE without a handle).
    pub fn flush_chain(&mut self, chain: &str) {
        self.nft(NFT_MSG_DELRULE, 0, format!("flush chain {chain}"), |a| {
            a.str(NFTA_RULE_TABLE, TABLE);
            a.str(NFTA_RULE_CHAIN, chain);
        });
    }

    /// `iifname @SET oifname @SET accept`, appended to `chain`.
    pub fn same_set_accept_rule(&mut self, chain: &str, set: &str) {
        self.nft(NFT_MSG_NEWRULE, NLM_F_CREATE | NLM_F_APPEND, format!("add rule {chain}: iifname @{set} oifname @{set} accept"), |a| {
            a.str(NFTA_RULE_TABLE, TABLE);
            a.str(NFTA_RULE_CHAIN, chain);
            a.nested(NFTA_RULE_EXPRESSIONS, |x| {
                for key in [NFT_META_IIFNAME, NFT_META_OIFNAME] {
                    x.expr("meta", |m| {
                        m.u32(NFTA_META_KEY, key);
                        m.u32(NFTA_META_DREG, NFT_REG_1);
                    });
                    x.expr("lookup", |l| {
                        l.str(NFTA_LOOKUP_SET, set);
                        l.u32(NFTA_LOOKUP_SREG, NFT_REG_1);
                    });
                }
                x.expr("immediate", |i| {
                    i.u32(NFTA_IMMEDIATE_DREG, NFT_REG_VERDICT);
                    i.nested(NFTA_IMMEDIATE_DATA, |d| d.nested(NFTA_DATA_VERDICT, |v| v.u32(NFTA_VERDICT_CODE, NF_ACCEPT)));
                });
            });
        });
    }

    fn finish(mut self) -> (Vec<u8>, Vec<(u32, String)>, u32) {
        self.message(NFNL_MSG_BATCH_END, NLM_F_REQUEST, libc::AF_UNSPEC as u8, NFNL_SUBSYS_NFTABLES, |_| {});
        (self.buf, self.what, self.seq)
    }
}

/// A NETLINK_NETFILTER socket, opened on first use.
pub struct NfSocket {
    socket: Socket,
    seq: u32,
}

impl NfSocket {
    pub fn open() -> Result<NfSocket, Error> {
        let mut socket = Socket::new(NETLINK_NETFILTER).map_err(|e| nl_err("socket", e))?;
        socket.bind_auto().map_err(|e| nl_err("bind", e))?;
        let tv = libc::timeval { tv_sec: REPLY_TIMEOUT_MS / 1000, tv_usec: (REPLY_TIMEOUT_MS % 1000) * 1000 };
        // SAFETY: a valid fd and a timeval of the size we pass.
        let rc = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(nl_err("SO_RCVTIMEO", std::io::Error::last_os_error()));
        }
        Ok(NfSocket { socket, seq: 1 })
    }

    pub fn batch(&self) -> Batch {
        Batch::new(self.seq)
    }

    /// Whether the kernel has set `name` in our table (a cheap check that
    /// nobody deleted the table or flushed the ruleset under us).
    pub fn has_set(&mut self, name: &str) -> Result<bool, Error> {
        let mut batch = Batch { buf: Vec::with_capacity(128), seq: self.seq, what: Vec::new(), next_set_id: 1 };
        batch.nft(NFT_MSG_GETSET, 0, format!("get set {name}"), |a| {
            a.str(NFTA_SET_TABLE, TABLE);
            a.str(NFTA_SET_NAME, name);
        });
        let seq = self.seq;
        self.seq = batch.seq;
        self.socket.send(&batch.buf, 0).map_err(|e| nl_err("send", e))?;
        let mut answer = None;
        self.answers(|got, code| {
            if got == seq {
                answer = Some(code);
            }
            answer.is_some()
        })?;
        match answer.unwrap_or(0) {
            0 => Ok(true),
            code if -code == libc::ENOENT => Ok(false),
            code => Err(nl_err(&format!("get set {name}"), std::io::Error::from_raw_os_error(-code))),
        }
    }

    /// Sends the batch and waits for every message's answer: Ok once all
    /// are acknowledged, else the first error (the kernel then applied
    /// nothing).
    pub fn commit(&mut self, batch: Batch) -> Result<(), Error> {
        if batch.is_empty() {
            return Ok(());
        }
        let (buf, what, next_seq) = batch.finish();
        self.seq = next_seq;
        self.socket.send(&buf, 0).map_err(|e| nl_err("send", e))?;
        let mut pending: std::collections::HashSet<u32> = what.iter().map(|(s, _)| *s).collect();
        let mut first_error: Option<Error> = None;
        self.answers(|seq, code| {
            if pending.remove(&seq) && code != 0 && first_error.is_none() {
                let about = what.iter().find(|(s, _)| *s == seq).map(|(_, w)| w.as_str()).unwrap_or("?");
                first_error = Some(nl_err(about, std::io::Error::from_raw_os_error(-code)));
            }
            pending.is_empty()
        })?;
        first_error.map_or(Ok(()), Err)
    }

    /// Reads the kernel's answers (NLMSG_ERROR: sequence number and error
    /// code, 0 for an acknowledgement) until `done` says so; other
    /// messages (a GETSET's reply) are skipped. Times out after
    /// REPLY_TIMEOUT_MS without an answer.
    fn answers(&self, mut done: impl FnMut(u32, i32) -> bool) -> Result<(), Error> {
        let mut rx = Vec::with_capacity(64 * 1024);
        loop {
            rx.clear();
            let n = self.socket.recv(&mut rx, 0).map_err(|e| nl_err("receive (no answer from the kernel)", e))?.min(rx.len());
            let mut off = 0;
            while off + 16 <= n {
                let len = u32::from_ne_bytes([rx[off], rx[off + 1], rx[off + 2], rx[off + 3]]) as usize;
                let ty = u16::from_ne_bytes([rx[off + 4], rx[off + 5]]);
                let seq = u32::from_ne_bytes([rx[off + 8], rx[off + 9], rx[off + 10], rx[off + 11]]);
                if len < 16 || off + len > n {
                    break;
                }
                if ty == NLMSG_ERROR && len >= 20 {
                    let code = i32::from_ne_bytes([rx[off + 16], rx[off + 17], rx[off + 18], rx[off + 19]]);
                    if done(seq, code) {
                        return Ok(());
                    }
                }
                off += len.next_multiple_of(4);
            }
        }
    }
}
