//! Declaring a kept cursor (see [`super::cursors`]): the DECLARE on each shard — one
//! extended-protocol exchange per shard, unnamed statement: `Parse` (`DECLARE c NO SCROLL
//! CURSOR [WITH HOLD] FOR <shard query>`), `Bind` (the client's parameters), `Execute`, and
//! on the first shard `Describe` of the new cursor's portal (its columns), then `Sync` —
//! or, for a query that cannot be merged as it streams, the whole result gathered now.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::BytesMut;

use super::cursor_fetch::{lost, protocol, NO_PARAMS};
use super::cursors::{DeclareParams, Done, Fail, Kept, Stream};
use super::gather::{Capture, GatherCall};
use super::relay::RelayError;
use super::{Session, Target};
use crate::backend::conn::BackendError;
use crate::error::ProxyError;
use crate::gather::datum;
use crate::gather::GatherPlan;
use crate::routing::router::Declare;
use crate::sharding::shardset::ShardSet;
use crate::wire::protocol::{build, Frame};

impl Session {
    /// Declares the cursor on each of `shards`; `None` when its sort keys cannot be compared
    /// in the proxy (the shards' cursors are closed again).
    pub(super) async fn declare_streams(
        &mut self,
        d: &Arc<Declare>,
        plan: &Arc<GatherPlan>,
        shards: &[usize],
        params: Option<&DeclareParams<'_>>,
    ) -> Result<Result<Option<Kept>, Fail>, RelayError> {
        let in_txn = self.txn.status.is_open();
        // Text keys sort in byte order only under a C-like collation (asked once per proxy).
        let mut bytewise = self.shared.bytewise_text.get().copied();
        if bytewise.is_none() && !plan.sort.is_empty() {
            match self.conn_for(shards[0]).await {
                Ok(i) => bytewise = Some(self.bytewise_text(i).await),
                Err(e) => return Ok(Err(e.into())),
            }
        }
        let mut pids = Vec::with_capacity(shards.len());
        for &s in shards {
            // (Outside a transaction a backend already pinned for the shard takes it too.)
            match self.conn_for(s).await {
                Ok(i) => pids.push((s, self.conns[i].pid)),
                Err(e) => return Ok(Err(e.into())),
            }
        }
        let sql = format!(
            "DECLARE {} NO SCROLL CURSOR{} FOR {}",
            crate::quote::ident(&d.name),
            if d.hold { " WITH HOLD" } else { "" },
            plan.shard_sql
        );
        let (types, section) = match params {
            Some(p) => (p.types, p.bind.params_section()),
            None => (&[][..], NO_PARAMS),
        };
        for (k, &(shard, pid)) in pids.iter().enumerate() {
            let mut msg = BytesMut::with_capacity(sql.len() + section.len() + 64);
            build::parse(&mut msg, "", &sql, types);
            build::bind(&mut msg, "", "", section, &[]);
            build::execute(&mut msg, "", 0);
            if k == 0 {
                build::target(&mut msg, b'D', b'P', &d.name);
            }
            build::empty(&mut msg, b'S');
            let conn = self
                .cursor_conn(pid)
                .ok_or_else(|| lost(shard, BackendError::Closed))?;
            conn.write_all(&msg).await.map_err(|e| lost(shard, e))?;
        }
        let mut fields = None;
        let mut failure: Option<Frame> = None;
        let mut declared = Vec::new();
        let timeout = self.topo.map.gather.timeout;
        for &(shard, pid) in &pids {
            let conn = self
                .cursor_conn(pid)
                .ok_or_else(|| lost(shard, BackendError::Closed))?;
            let mut ok = true;
            loop {
                let f = match tokio::time::timeout(timeout, conn.read_frame()).await {
                    Ok(r) => r.map_err(|e| lost(shard, e))?,
                    Err(_) => return Err(lost(shard, BackendError::Timeout(timeout))),
                };
                match f.tag {
                    b'T' => fields = Some(f),
                    b'E' => {
                        ok = false;
                        failure.get_or_insert(f);
                    }
                    b'Z' => break,
                    _ => {}
                }
            }
            if ok {
                declared.push(pid);
            }
        }
        if let Some(f) = failure {
            if !in_txn {
                let _ = self.close_on(&d.name, &declared).await;
            }
            return Ok(Err(Fail::Shard(f)));
        }
        let Some(desc) = fields else {
            return Ok(Err(Fail::Proxy(ProxyError::Unsupported(
                "this cursor's query returns no rows and cannot be merged across shards".into(),
            ))));
        };
        let all = match datum::parse_row_description(desc.body()) {
            Ok(f) => f,
            Err(e) => return Ok(Err(protocol(e))),
        };
        let visible = all.len().saturating_sub(plan.hidden);
        let key_types: Vec<u32> = plan
            .sort
            .iter()
            .map(|k| all.get(k.col.index(visible)).map_or(0, |f| f.type_oid))
            .collect();
        if !super::gather::streamable(plan, &key_types, bytewise.unwrap_or(false)) {
            let _ = self.close_on(&d.name, &declared).await;
            return Ok(Ok(None));
        }
        let call = GatherCall {
            plan,
            sql: &d.query,
            param_types: types,
            bind: params.map(|p| p.bind),
            describe: false,
        };
        let counts = self
            .count_value(plan.limit, &call, "LIMIT")
            .and_then(|l| Ok((l, self.count_value(plan.offset, &call, "OFFSET")?)));
        let (limit, offset) = match counts {
            Ok(c) => c,
            Err(e) => {
                let _ = self.close_on(&d.name, &declared).await;
                return Ok(Err(e.into()));
            }
        };
        let mut fields = all;
        fields.truncate(visible);
        Ok(Ok(Some(Kept {
            decl: d.clone(),
            plan: plan.clone(),
            fields,
            key_types,
            streams: pids
                .iter()
                .map(|&(shard, pid)| Stream {
                    shard,
                    pid,
                    rows: VecDeque::new(),
                    bytes: 0,
                    done: false,
                })
                .collect(),
            skip: offset.unwrap_or(0),
            left: limit.unwrap_or(i64::MAX),
            formats: Vec::new(),
            gathered: None,
        })))
    }

    /// Closes the cursor `name` (its name on the shards) on the backends `pids`; returns the
    /// first failure: a shard's error (its cursor is gone), or a backend the session no
    /// longer holds. Each reply is awaited within the gather timeout.
    pub(super) async fn close_on(&mut self, name: &str, pids: &[i32]) -> Option<Fail> {
        let mut msg = BytesMut::new();
        build::query(&mut msg, &format!("CLOSE {}", crate::quote::ident(name)));
        let timeout = self.topo.map.gather.timeout;
        let mut failure = None;
        for &pid in pids {
            let Some(conn) = self.cursor_conn(pid) else {
                failure.get_or_insert(Fail::Proxy(super::cursors::missing(name)));
                continue;
            };
            if conn.write_all(&msg).await.is_err() {
                continue;
            }
            while let Ok(Ok(f)) = tokio::time::timeout(timeout, conn.read_frame()).await {
                match f.tag {
                    b'E' if failure.is_none() => failure = Some(Fail::Shard(f)),
                    b'Z' => break,
                    _ => {}
                }
            }
        }
        failure
    }

    /// A cursor whose query the proxy cannot merge as it streams: the whole result is
    /// gathered now (within the gather memory limit) and handed out by FETCH.
    pub(super) async fn declare_gathered(
        &mut self,
        d: &Arc<Declare>,
        plan: Arc<GatherPlan>,
        target: Target,
        params: Option<DeclareParams<'_>>,
    ) -> Done {
        let set = match target {
            Target::Shard(s) => {
                let mut set = ShardSet::default();
                set.add(s);
                set
            }
            Target::Set(set) => set,
        };
        let call = GatherCall {
            plan: &plan,
            sql: &d.query,
            param_types: params.as_ref().map_or(&[][..], |p| p.types),
            bind: params.as_ref().map(|p| p.bind),
            describe: true,
        };
        let limit = self.topo.map.gather.memory_limit;
        let start = self.out.len();
        self.capture = Some(Capture {
            start,
            limit,
            overflow: false,
        });
        let r = self.gather(&call, set, true).await;
        let cap = self.capture.take();
        let o = r?;
        let captured = self.out.split_off(start).freeze();
        if cap.is_some_and(|c| c.overflow) {
            return Ok(Err(Fail::Proxy(ProxyError::OutOfMemory(format!(
                "cursor \"{}\" over a query the proxy must gather (aggregates, DISTINCT, or sort keys it cannot compare) needs more than the gather memory limit ({} MiB, gather.memory_limit_mb); add a shard key or a LIMIT, or raise the limit",
                d.name,
                limit >> 20
            )))));
        }
        let mut rows = VecDeque::new();
        let mut fields = Vec::new();
        for (tag, m) in super::gather::captured_messages(&captured) {
            match tag {
                b'D' => rows.push_back(m),
                b'T' => match datum::parse_row_description(m.get(5..).unwrap_or(&[])) {
                    Ok(f) => fields = f,
                    Err(e) => return Ok(Err(protocol(e))),
                },
                b'C' => {}
                _ => self.out.extend_from_slice(&m),
            }
        }
        if o.error {
            return Ok(Err(Fail::Sent));
        }
        let formats = match params.as_ref() {
            Some(p) => datum::expand_formats(&p.bind.result_formats(), fields.len())
                .unwrap_or_else(|_| vec![0; fields.len()]),
            None => vec![0; fields.len()],
        };
        self.cursors_mut().kept.insert(
            d.name.clone(),
            Kept {
                decl: d.clone(),
                plan,
                fields,
                key_types: Vec::new(),
                streams: Vec::new(),
                skip: 0,
                left: i64::MAX,
                formats,
                gathered: Some(rows),
            },
        );
        Ok(Ok("DECLARE CURSOR".into()))
    }
}
