//! Builders for messages the proxy sends (to clients or, for a few, to backends).

use bytes::{BufMut, BytesMut};

/// Starts a message: writes `tag` and a length placeholder; returns where the length
/// goes, for [`finish`].
pub fn begin(buf: &mut BytesMut, tag: u8) -> usize {
    buf.put_u8(tag);
    let at = buf.len();
    buf.put_i32(0);
    at
}
/// Ends a message started with [`begin`] by filling in its length.
pub fn finish(buf: &mut BytesMut, at: usize) {
    let len = (buf.len() - at) as i32;
    buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

/// AuthenticationOk / SASL / MD5 request: code plus payload.
pub fn auth(buf: &mut BytesMut, code: i32, payload: &[u8]) {
    let at = begin(buf, b'R');
    buf.put_i32(code);
    buf.put_slice(payload);
    finish(buf, at);
}
/// ParameterStatus.
pub fn parameter_status(buf: &mut BytesMut, name: &str, value: &str) {
    let at = begin(buf, b'S');
    put_cstr(buf, name);
    put_cstr(buf, value);
    finish(buf, at);
}
/// BackendKeyData.
pub fn backend_key_data(buf: &mut BytesMut, pid: i32, secret: i32) {
    let at = begin(buf, b'K');
    buf.put_i32(pid);
    buf.put_i32(secret);
    finish(buf, at);
}
/// ReadyForQuery with a transaction status byte (`I`, `T` or `E`).
pub fn ready_for_query(buf: &mut BytesMut, status: u8) {
    let at = begin(buf, b'Z');
    buf.put_u8(status);
    finish(buf, at);
}
/// ErrorResponse (or NoticeResponse with tag `N`).
pub fn error(buf: &mut BytesMut, severity: &str, code: &str, message: &str) {
    error_bytes(buf, severity, code, message.as_bytes());
}
/// ErrorResponse whose message is already in the client's encoding (not UTF-8).
pub fn error_bytes(buf: &mut BytesMut, severity: &str, code: &str, message: &[u8]) {
    error_fields(buf, severity, code, message, &[]);
}
/// ErrorResponse with more fields after the message (`(type, value)`: `F` file, `L` line,
/// `R` routine, …).
pub fn error_fields(
    buf: &mut BytesMut,
    severity: &str,
    code: &str,
    message: &[u8],
    fields: &[(u8, &str)],
) {
    let at = begin(buf, b'E');
    buf.put_u8(b'S');
    put_cstr(buf, severity);
    buf.put_u8(b'V');
    put_cstr(buf, severity);
    buf.put_u8(b'C');
    put_cstr(buf, code);
    buf.put_u8(b'M');
    buf.put_slice(message);
    buf.put_u8(0);
    for (kind, value) in fields {
        buf.put_u8(*kind);
        put_cstr(buf, value);
    }
    buf.put_u8(0);
    finish(buf, at);
}
/// NoticeResponse of severity WARNING (what Postgres sends for, e.g., a COMMIT with no
/// transaction in progress).
pub fn warning(buf: &mut BytesMut, code: &str, message: &str) {
    let at = begin(buf, b'N');
    for (kind, value) in [
        (b'S', "WARNING"),
        (b'V', "WARNING"),
        (b'C', code),
        (b'M', message),
    ] {
        buf.put_u8(kind);
        put_cstr(buf, value);
    }
    buf.put_u8(0);
    finish(buf, at);
}
/// CommandComplete.
pub fn command_complete(buf: &mut BytesMut, tag: &str) {
    let at = begin(buf, b'C');
    put_cstr(buf, tag);
    finish(buf, at);
}
/// A message with an empty body (ParseComplete `1`, BindComplete `2`, CloseComplete `3`,
/// NoData `n`, EmptyQueryResponse `I`, Sync `S`, Flush `H`, Terminate `X`).
pub fn empty(buf: &mut BytesMut, tag: u8) {
    buf.put_u8(tag);
    buf.put_i32(4);
}
/// RowDescription of columns made by the proxy: (name, type oid, type length, format)
/// each, no table.
pub fn row_description(buf: &mut BytesMut, columns: &[(&str, u32, i16, i16)]) {
    let at = begin(buf, b'T');
    buf.put_i16(columns.len() as i16);
    for &(name, oid, len, format) in columns {
        put_cstr(buf, name);
        buf.put_i32(0); // table oid
        buf.put_i16(0); // column number
        buf.put_u32(oid);
        buf.put_i16(len);
        buf.put_i32(-1); // type modifier
        buf.put_i16(format);
    }
    finish(buf, at);
}
/// DataRow of raw values (`None` = NULL), in whatever format was asked.
pub fn data_row_raw(buf: &mut BytesMut, values: &[Option<&[u8]>]) {
    let at = begin(buf, b'D');
    buf.put_i16(values.len() as i16);
    for v in values {
        match v {
            Some(b) => {
                buf.put_i32(b.len() as i32);
                buf.put_slice(b);
            }
            None => buf.put_i32(-1),
        }
    }
    finish(buf, at);
}
/// DataRow of text values (`None` = NULL).
pub fn data_row(buf: &mut BytesMut, values: &[Option<&str>]) {
    let raw: Vec<Option<&[u8]>> = values.iter().map(|v| v.map(str::as_bytes)).collect();
    data_row_raw(buf, &raw);
}
/// Query (simple protocol).
pub fn query(buf: &mut BytesMut, sql: &str) {
    let at = begin(buf, b'Q');
    put_cstr(buf, sql);
    finish(buf, at);
}
/// Parse with a statement name, SQL and parameter types.
pub fn parse(buf: &mut BytesMut, name: &str, sql: &str, types: &[u32]) {
    let at = begin(buf, b'P');
    put_cstr(buf, name);
    put_cstr(buf, sql);
    buf.put_i16(types.len() as i16);
    for t in types {
        buf.put_u32(*t);
    }
    finish(buf, at);
}
/// A Bind of `statement` into `portal`: `params` is the parameter part of a Bind body
/// (format codes, then values) as a client sent it, `result_formats` the result formats.
pub fn bind(
    buf: &mut BytesMut,
    portal: &str,
    statement: &str,
    params: &[u8],
    result_formats: &[i16],
) {
    let at = begin(buf, b'B');
    put_cstr(buf, portal);
    put_cstr(buf, statement);
    buf.put_slice(params);
    buf.put_i16(result_formats.len() as i16);
    for f in result_formats {
        buf.put_i16(*f);
    }
    finish(buf, at);
}
/// A Bind body after the statement name (for [`bind_renamed`]) that binds the client's
/// parameters `take` (in that order), each with its own format code, and asks for
/// `result_formats`.
pub fn bind_tail(
    take: &[usize],
    params: &[Option<&[u8]>],
    is_binary: &dyn Fn(usize) -> bool,
    result_formats: &[i16],
) -> Vec<u8> {
    let formats: Vec<i16> = take.iter().map(|&i| i16::from(is_binary(i))).collect();
    let values: Vec<Option<&[u8]>> = take
        .iter()
        .map(|&i| params.get(i).copied().flatten())
        .collect();
    bind_tail_values(&formats, &values, result_formats)
}
/// The tail of a Bind (after its statement name): parameters `values` in formats
/// `param_formats` (one code each), then `result_formats`.
pub fn bind_tail_values(
    param_formats: &[i16],
    values: &[Option<&[u8]>],
    result_formats: &[i16],
) -> Vec<u8> {
    let mut b = Vec::with_capacity(
        8 + values
            .iter()
            .map(|v| 6 + v.map_or(0, <[u8]>::len))
            .sum::<usize>(),
    );
    b.extend_from_slice(&(param_formats.len() as i16).to_be_bytes());
    for f in param_formats {
        b.extend_from_slice(&f.to_be_bytes());
    }
    b.extend_from_slice(&(values.len() as i16).to_be_bytes());
    for v in values {
        match v {
            Some(v) => {
                b.extend_from_slice(&(v.len() as i32).to_be_bytes());
                b.extend_from_slice(v);
            }
            None => b.extend_from_slice(&(-1i32).to_be_bytes()),
        }
    }
    b.extend_from_slice(&(result_formats.len() as i16).to_be_bytes());
    for f in result_formats {
        b.extend_from_slice(&f.to_be_bytes());
    }
    b
}
/// A Bind of the client's parameters `params` (each in the format `is_binary` gives it),
/// followed by `extra` in text format, asking for `result_formats`: one format code per
/// parameter, so the extra ones can be text whatever the client's were.
pub fn bind_with_extra(
    buf: &mut BytesMut,
    portal: &str,
    statement: &str,
    params: &[Option<&[u8]>],
    is_binary: &dyn Fn(usize) -> bool,
    extra: &[&[u8]],
    result_formats: &[i16],
) {
    let at = begin(buf, b'B');
    put_cstr(buf, portal);
    put_cstr(buf, statement);
    let n = params.len() + extra.len();
    buf.put_i16(n as i16);
    for i in 0..params.len() {
        buf.put_i16(i16::from(is_binary(i)));
    }
    for _ in extra {
        buf.put_i16(0);
    }
    buf.put_i16(n as i16);
    for v in params.iter().copied().chain(extra.iter().map(|e| Some(*e))) {
        match v {
            Some(v) => {
                buf.put_i32(v.len() as i32);
                buf.put_slice(v);
            }
            None => buf.put_i32(-1),
        }
    }
    buf.put_i16(result_formats.len() as i16);
    for f in result_formats {
        buf.put_i16(*f);
    }
    finish(buf, at);
}
/// A Bind whose statement name is replaced; `tail` is the original body after the statement name.
pub fn bind_renamed(buf: &mut BytesMut, portal: &str, statement: &str, tail: &[u8]) {
    let at = begin(buf, b'B');
    put_cstr(buf, portal);
    put_cstr(buf, statement);
    buf.put_slice(tail);
    finish(buf, at);
}
/// Execute of a portal (`max_rows` 0 = all rows).
pub fn execute(buf: &mut BytesMut, portal: &str, max_rows: i32) {
    let at = begin(buf, b'E');
    put_cstr(buf, portal);
    buf.put_i32(max_rows);
    finish(buf, at);
}
/// Describe or Close (`tag` `D` or `C`) of a statement or portal.
pub fn target(buf: &mut BytesMut, tag: u8, kind: u8, name: &str) {
    let at = begin(buf, tag);
    buf.put_u8(kind);
    put_cstr(buf, name);
    finish(buf, at);
}
/// A NUL-terminated string.
pub fn put_cstr(buf: &mut BytesMut, s: &str) {
    buf.put_slice(s.as_bytes());
    buf.put_u8(0);
}
