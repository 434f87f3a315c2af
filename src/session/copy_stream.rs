//! The data phase of a split `COPY … FROM STDIN` ([`Session::stream_copy`]): the client's
//! copy messages are read until CopyDone, cut into rows (text, CSV) or tuples (binary), and
//! each shard is sent its own rows in CopyData messages of up to [`SHARD_CHUNK`] bytes.

use bytes::BytesMut;

use super::copy_in::{copy_data, Abort, SHARD_CHUNK};
use super::copy_layout::Layout;
use super::relay::RelayError;
use super::Session;
use crate::error::ProxyError;
use crate::routing::copyplan::{CopyPlan, CopyTarget};
use crate::routing::copysplit::{BinarySplitter, CopyFormat, CopySplitter, SplitError};
use crate::sharding::keys::{key_from_binary, key_from_text, KeyType, KeyValue};
use crate::sharding::strategy::Located;
use crate::wire::encoding::Codec;
use crate::wire::protocol::build;

/// The splitter of a sharded COPY, by format.
enum Split {
    Text(CopySplitter),
    Binary(BinarySplitter),
}

impl Split {
    fn new(plan: &CopyPlan, format: CopyFormat, layout: Layout, max: usize) -> Split {
        let is_key = plan.generated_key();
        if plan.binary {
            let sp = BinarySplitter::new(layout.key, layout.columns, max);
            return Split::Binary(match layout.generated {
                Some(w) => sp.append_generated(is_key, w),
                None => sp,
            });
        }
        let sp = CopySplitter::new(format, layout.key, layout.columns, max);
        Split::Text(match plan.generated {
            Some(_) => sp.append_generated(is_key),
            None => sp,
        })
    }

    /// Takes in a CopyData payload before [`Split::values_needed`] (binary counts the
    /// tuples it completes; text scans it when fed).
    fn load(&mut self, chunk: &[u8]) {
        if let Split::Binary(sp) = self {
            sp.push(chunk);
        }
    }

    /// Generated values the next [`Split::feed`] (`Some`) or [`Split::finish`] (`None`)
    /// needs.
    fn values_needed(&self, chunk: Option<&[u8]>) -> usize {
        match self {
            Split::Text(sp) => sp.values_needed(chunk),
            Split::Binary(sp) => chunk.map_or(0, |_| sp.values_needed()),
        }
    }

    fn supply(&mut self, values: Vec<i64>) {
        match self {
            Split::Text(sp) => sp.supply(values),
            Split::Binary(sp) => sp.supply(values),
        }
    }

    fn feed<E>(
        &mut self,
        chunk: &[u8],
        out: &mut [Vec<u8>],
        route: impl FnMut(Option<&[u8]>) -> Result<usize, E>,
    ) -> Result<(), SplitError<E>> {
        match self {
            Split::Text(sp) => sp.feed(chunk, out, route),
            Split::Binary(sp) => sp.drain(out, route),
        }
    }

    fn finish<E>(
        &mut self,
        out: &mut [Vec<u8>],
        route: impl FnMut(Option<&[u8]>) -> Result<usize, E>,
    ) -> Result<(), SplitError<E>> {
        match self {
            Split::Text(sp) => sp.finish(out, route),
            Split::Binary(sp) => sp.finish(out),
        }
    }

    fn last_generated(&self) -> Option<i64> {
        match self {
            Split::Text(sp) => sp.last_generated(),
            Split::Binary(sp) => sp.last_generated(),
        }
    }

    fn header(&self) -> Option<&[u8]> {
        match self {
            Split::Text(sp) => sp.header(),
            Split::Binary(_) => None,
        }
    }
}

/// A key field as the client sent it, decoded as a key of type `ty`: binary send format
/// or text; a text key's characters are read in the client's encoding (`codec`), as Postgres
/// converts them.
fn decode_key(
    ty: KeyType,
    raw: &[u8],
    binary: bool,
    codec: Option<Codec>,
) -> Result<KeyValue, ProxyError> {
    if binary && ty != KeyType::Text {
        return Ok(key_from_binary(ty, raw)?);
    }
    let text = match codec {
        Some(c) => c
            .to_utf8(raw)
            .map_err(|e| ProxyError::Encoding(e.to_string()))?,
        None if binary => return Ok(key_from_binary(ty, raw)?),
        None => std::borrow::Cow::Borrowed(std::str::from_utf8(raw).map_err(|_| {
            ProxyError::Protocol("invalid UTF-8 in the shard key of a COPY row".into())
        })?),
    };
    if binary {
        // NUL bytes are refused as textrecv refuses them.
        return Ok(key_from_binary(ty, text.as_bytes())?);
    }
    Ok(key_from_text(ty, &text)?)
}

impl Session {
    /// Reads the client's copy messages until CopyDone (`None`) or a reason to abort, sending
    /// each shard its rows and finally CopyDone.
    pub(super) async fn stream_copy(
        &mut self,
        plan: &CopyPlan,
        format: CopyFormat,
        layout: Option<Layout>,
        idxs: &[usize],
    ) -> Result<Option<Abort>, RelayError> {
        let n = self.topo.map.shards.len();
        let map = self.topo.map.clone();
        let mut splitter = match (&plan.target, layout) {
            (CopyTarget::Sharded { .. }, Some(l)) => {
                Some(Split::new(plan, format, l, map.max_message_size))
            }
            _ => None,
        };
        let table = match &plan.target {
            CopyTarget::Sharded { table, .. } => Some(table.clone()),
            CopyTarget::Reference => None,
        };
        let codec = self.codec;
        let binary = plan.binary;
        let route = |key: Option<&[u8]>| -> Result<usize, ProxyError> {
            let Some(t) = &table else {
                return Ok(0);
            };
            let Some(raw) = key else {
                return Err(ProxyError::NoShard(format!(
                    "shard key {} must not be NULL",
                    t.what()
                )));
            };
            // The key's characters decide its shard, whatever encoding the client speaks.
            let k = decode_key(t.key_type, raw, binary, codec)?;
            match map.locate(t, &k, true) {
                Located::Shard(s) => Ok(s),
                Located::Nowhere(why) => Err(ProxyError::NoShard(why)),
                Located::Unavailable(why) => Err(ProxyError::Unavailable(why)),
            }
        };
        let mut out: Vec<Vec<u8>> = vec![Vec::new(); n];
        if let Some(Split::Binary(sp)) = &splitter {
            sp.start(&mut out);
        }
        let mut header_sent = !plan.format.header;
        let mut msg = BytesMut::new();
        loop {
            let f = match self.reader.next().await {
                Ok(Some(f)) => f,
                Ok(None) => {
                    return Err(RelayError::Client(super::SessionEnd::Protocol(
                        "client left during COPY".into(),
                    )))
                }
                Err(e) => return Err(RelayError::Client(e.into())),
            };
            let chunk = match f.tag {
                b'd' => Some(f.body()),
                _ => None,
            };
            if let (Some(sp), Some(c)) = (splitter.as_mut(), chunk) {
                sp.load(c);
            }
            // Values for the rows this message can complete (generated column left out).
            if let (Some(g), Some(sp)) = (&plan.generated, splitter.as_mut()) {
                let need = if matches!(f.tag, b'd' | b'c') {
                    sp.values_needed(chunk)
                } else {
                    0
                };
                if need > 0 {
                    let target = crate::backend::ids::GenTarget {
                        schema: &g.schema,
                        table: &g.table,
                        column: &g.column,
                    };
                    let mut values = Vec::with_capacity(need);
                    if let Err(e) = self.shared.ids.take(&map, &target, need, &mut values).await {
                        return Ok(Some(Abort::Proxy(e)));
                    }
                    sp.supply(values);
                }
            }
            let done = match f.tag {
                b'd' => {
                    let r = match splitter.as_mut() {
                        Some(sp) => sp.feed(f.body(), &mut out, route),
                        None => {
                            // Reference table: every shard gets the data as sent.
                            self.copy_to(idxs, &f.raw).await?;
                            Ok(())
                        }
                    };
                    if let Err(e) = r {
                        return Ok(Some(Abort::Proxy(split_error(&plan.relation, e))));
                    }
                    false
                }
                b'c' => {
                    if let Some(sp) = splitter.as_mut() {
                        if let Err(e) = sp.finish(&mut out, route) {
                            return Ok(Some(Abort::Proxy(split_error(&plan.relation, e))));
                        }
                    }
                    true
                }
                b'f' => {
                    let m = crate::wire::protocol::Cursor::new(f.body(), "CopyFail")
                        .cstr()
                        .unwrap_or("")
                        .to_string();
                    return Ok(Some(Abort::ClientFail(m)));
                }
                b'H' | b'S' => false, // ignored during COPY, as Postgres does
                other => {
                    return Err(RelayError::Client(super::SessionEnd::Protocol(format!(
                        "unexpected message type {other} during COPY from stdin"
                    ))))
                }
            };
            if !header_sent {
                if let Some(h) = splitter.as_ref().and_then(|s| s.header()) {
                    // Each shard checks (and skips) the header itself, ahead of its rows.
                    let h = h.to_vec();
                    for o in out.iter_mut() {
                        o.splice(0..0, h.iter().copied());
                    }
                    header_sent = true;
                }
            }
            for &ci in idxs {
                let shard = self.conns[ci].shard;
                let o = &mut out[shard];
                if o.len() >= SHARD_CHUNK || (done && !o.is_empty()) {
                    msg.clear();
                    copy_data(&mut msg, o);
                    o.clear();
                    self.copy_to(&[ci], &msg).await?;
                }
            }
            if done {
                msg.clear();
                build::empty(&mut msg, b'c');
                self.copy_to(idxs, &msg).await?;
                if let (Some(g), Some(v)) = (
                    &plan.generated,
                    splitter.as_ref().and_then(|s| s.last_generated()),
                ) {
                    self.generated.note(&g.column.sequence, v);
                }
                return Ok(None);
            }
        }
    }
}

/// A splitter error as the client sees it (SQLSTATE 22P04 bad copy format, 54000 row too
/// long, 22003 a generated value out of range, or the routing error), naming the table and
/// line as Postgres's COPY context does.
fn split_error(relation: &str, e: SplitError<ProxyError>) -> ProxyError {
    let code = e.sqlstate();
    match e {
        SplitError::Route { line, error } => match error {
            ProxyError::Key(k) => ProxyError::Backend {
                code: k.sqlstate().into(),
                message: format!("{k} (COPY {relation}, line {line})"),
            },
            ProxyError::NoShard(why) => {
                ProxyError::NoShard(format!("{why} (COPY {relation}, line {line})"))
            }
            other => other,
        },
        other => ProxyError::Backend {
            code: code.unwrap_or("22P04").into(),
            message: format!("{other} (COPY {relation})"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_and_text_keys_decode_alike() {
        let t = decode_key(KeyType::BigInt, b"42", false, None).unwrap();
        let b = decode_key(KeyType::BigInt, &42i32.to_be_bytes(), true, None).unwrap();
        assert_eq!(t, b);
        let t = decode_key(KeyType::Text, "café".as_bytes(), false, None).unwrap();
        let b = decode_key(KeyType::Text, "café".as_bytes(), true, None).unwrap();
        assert_eq!(t, b);
        assert!(decode_key(KeyType::Text, b"a\0b", true, None).is_err());
        assert!(decode_key(KeyType::Text, b"\xff", true, None).is_err());
        assert!(decode_key(KeyType::BigInt, b"\x01", true, None).is_err());
    }
}
