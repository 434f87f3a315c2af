//! The text an EXECUTE runs ([`expand`]): the prepared statement's text with each `$n`
//! replaced by the EXECUTE's argument `n`, put where the EXECUTE stood (alone, in
//! `EXPLAIN`, in `CREATE TABLE … AS`). The `$n` were found by a lexer that knows quotes,
//! dollar quotes and comments, so a `$1` inside a literal or an identifier stays as it is.

use super::insert_lex::{Tok, TokKind};
use super::sql_prepare::{items, tokens, without_semicolons, ExecWrap, SqlError};
use super::sql_prepare::{SqlExecute, SqlPrepare};
use crate::error::ProxyError;

/// `text`, a statement holding EXECUTE `exec`, with the EXECUTE replaced by `prep`'s
/// statement, whose `$n` become `((arg)::type)` when PREPARE declared the type and `(arg)`
/// otherwise (`((arg)::text)` where a constant would be a column number, see
/// [`super::Slot::ordinal_place`]). Errors as Postgres raises them at EXECUTE: the number of arguments, an
/// argument it refuses, `CREATE TABLE … AS EXECUTE` of a statement that is no query.
pub fn expand(text: &str, exec: &SqlExecute, prep: &SqlPrepare) -> Result<String, ProxyError> {
    if exec.args != prep.params {
        return Err(ProxyError::WrongParamCount {
            name: exec.name.clone(),
            expected: prep.params,
            got: exec.args,
        });
    }
    if let Some(e) = &exec.error {
        return Err(e.to_error());
    }
    if exec.wrap == ExecWrap::CreateAs && !prep.is_select {
        return Err(SqlError::new("42809", "prepared statement is not a SELECT".into()).to_error());
    }
    let unreadable = || ProxyError::Syntax("could not read the EXECUTE statement".into());
    let all = tokens(text, "EXECUTE")?;
    let toks = without_semicolons(text, &all);
    let at = clause_start(text, toks, exec.wrap).ok_or_else(unreadable)?;
    let depth0 = |from: usize, kind: TokKind| {
        toks.get(from..)?
            .iter()
            .position(|t| t.depth == 0 && t.kind == kind)
            .map(|k| k + from)
    };
    let (args, end) = match depth0(at + 1, TokKind::Open) {
        Some(open) => {
            let close = depth0(open + 1, TokKind::Close).ok_or_else(unreadable)?;
            (items(text, &toks[open + 1..close], 1), toks[close].end)
        }
        None => {
            // The name ends the clause, or comes before CREATE TABLE AS's WITH [NO] DATA.
            let stop = toks
                .iter()
                .skip(at + 2)
                .position(|t| t.depth == 0 && t.is(text, "with"))
                .map_or(toks.len(), |k| k + at + 2);
            let last = toks.get(stop - 1).filter(|_| stop > at + 1);
            (Vec::new(), last.ok_or_else(unreadable)?.end)
        }
    };
    if args.len() != exec.args {
        return Err(unreadable());
    }
    let mut out = String::with_capacity(text.len() + prep.body.len() + 16 * args.len());
    out.push_str(&text[..toks[at].start]);
    let args: Vec<&str> = args.iter().map(|&(a, b)| &text[a..b]).collect();
    substitute(prep, &args, &mut out)?;
    out.push_str(&text[end..]);
    Ok(out)
}

/// Where the EXECUTE clause of a statement `wrap` says holds one begins (a token index).
fn clause_start(text: &str, toks: &[Tok], wrap: ExecWrap) -> Option<usize> {
    let execute = |i: &usize| toks[*i].depth == 0 && toks[*i].is(text, "execute");
    match wrap {
        ExecWrap::Alone => Some(0).filter(execute),
        ExecWrap::Explain => (1..toks.len()).find(execute),
        ExecWrap::CreateAs => (1..toks.len()).find(|i| execute(i) && toks[i - 1].is(text, "as")),
    }
}

/// Appends `prep`'s text with its parameters replaced by `args`.
fn substitute(prep: &SqlPrepare, args: &[&str], out: &mut String) -> Result<(), ProxyError> {
    let body = prep.body.as_str();
    let mut last = 0;
    for slot in &prep.slots {
        let arg = slot
            .param
            .checked_sub(1)
            .and_then(|i| args.get(i))
            .ok_or_else(|| ProxyError::Internal("a parameter without its argument".into()))?;
        out.push_str(&body[last..slot.at]);
        let ty = match prep.types.get(slot.param - 1) {
            Some(ty) => Some(ty.as_str()),
            None if slot.ordinal_place => Some("text"),
            None => None,
        };
        match ty {
            Some(ty) => {
                out.push_str("((");
                out.push_str(arg);
                out.push_str(")::");
                out.push_str(ty);
                out.push(')');
            }
            None => {
                out.push('(');
                out.push_str(arg);
                out.push(')');
            }
        }
        last = slot.at + slot.len;
        if let Some(a) = slot.alias_at {
            out.push_str(&body[last..a]);
            out.push_str(" AS \"?column?\"");
            last = a;
        }
    }
    out.push_str(&body[last..]);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::sql_prepare::{execute, prepare};
    use super::*;
    use pg_query::NodeEnum;

    fn node(sql: &str) -> NodeEnum {
        let parsed = pg_query::parse(sql, 0).unwrap();
        parsed.protobuf.stmts[0]
            .stmt
            .as_ref()
            .and_then(|s| s.node.clone())
            .unwrap()
    }

    fn prep(sql: &str) -> SqlPrepare {
        match node(sql) {
            NodeEnum::PrepareStmt(p) => prepare(&p, sql, 0).unwrap(),
            other => panic!("{other:?}"),
        }
    }

    fn run(p: &SqlPrepare, sql: &str) -> Result<String, ProxyError> {
        let (e, wrap) = match node(sql) {
            NodeEnum::ExecuteStmt(e) => (e, ExecWrap::Alone),
            NodeEnum::ExplainStmt(x) => match x.query.and_then(|q| q.node) {
                Some(NodeEnum::ExecuteStmt(e)) => (e, ExecWrap::Explain),
                other => panic!("{other:?}"),
            },
            NodeEnum::CreateTableAsStmt(c) => match c.query.and_then(|q| q.node) {
                Some(NodeEnum::ExecuteStmt(e)) => (e, ExecWrap::CreateAs),
                other => panic!("{other:?}"),
            },
            other => panic!("{other:?}"),
        };
        expand(sql, &execute(&e, wrap), p)
    }

    #[test]
    fn arguments_replace_parameters_outside_literals() {
        let p = prep(
            "PREPARE p(bigint, text) AS SELECT $1, '$1' AS \"$2\", $$ $1 $$, /* $2 */ $2 || 'x' FROM t WHERE id = $1",
        );
        let got = run(&p, "EXECUTE p(4 + 1, 'a''b' -- c\n);").unwrap();
        assert_eq!(
            got,
            "SELECT ((4 + 1)::bigint) AS \"?column?\", '$1' AS \"$2\", $$ $1 $$, /* $2 */ (('a''b')::text) || 'x' FROM t WHERE id = ((4 + 1)::bigint);"
        );
        let u = prep("PREPARE u AS UPDATE t SET v = $2 WHERE id = $1 RETURNING ($2)");
        assert_eq!(
            run(&u, "EXECUTE u(7, now())").unwrap(),
            "UPDATE t SET v = (now()) WHERE id = (7) RETURNING ((now())) AS \"?column?\""
        );
        // There a constant would be a column number; Postgres sorts and groups by the value.
        let o = prep(
            "PREPARE o(int) AS SELECT a FROM t WHERE a <> $2 GROUP BY a, $2 ORDER BY $2, $1 DESC",
        );
        assert_eq!(
            run(&o, "EXECUTE o(1, 2)").unwrap(),
            "SELECT a FROM t WHERE a <> (2) GROUP BY a, ((2)::text) ORDER BY ((2)::text), ((1)::int) DESC"
        );
        let a = prep("PREPARE a(int[]) AS SELECT $1[2] AS x");
        assert_eq!(
            run(&a, "EXECUTE a(ARRAY[1, 2])").unwrap(),
            "SELECT ((ARRAY[1, 2])::int[])[2] AS x"
        );
    }

    #[test]
    fn explain_and_create_table_as_wrap_the_statement() {
        let p = prep("PREPARE s(int) AS SELECT * FROM t WHERE id = $1");
        assert_eq!(
            run(&p, "EXPLAIN (COSTS OFF) EXECUTE s(3)").unwrap(),
            "EXPLAIN (COSTS OFF) SELECT * FROM t WHERE id = ((3)::int)"
        );
        assert_eq!(
            run(&p, "CREATE TABLE c AS EXECUTE s (3) WITH NO DATA").unwrap(),
            "CREATE TABLE c AS SELECT * FROM t WHERE id = ((3)::int) WITH NO DATA"
        );
        let n = prep("PREPARE n AS SELECT 1");
        assert_eq!(
            run(&n, "CREATE TABLE c AS EXECUTE n WITH DATA").unwrap(),
            "CREATE TABLE c AS SELECT 1 WITH DATA"
        );
        assert_eq!(run(&n, "EXECUTE n;").unwrap(), "SELECT 1;");
        let i = prep("PREPARE i AS INSERT INTO t VALUES (1)");
        let e = run(&i, "CREATE TABLE c AS EXECUTE i").unwrap_err();
        assert_eq!(e.sqlstate(), "42809");
    }

    #[test]
    fn postgres_errors_for_arguments() {
        let p = prep("PREPARE p(int) AS SELECT $1");
        let e = run(&p, "EXECUTE p(1, 2)").unwrap_err();
        assert_eq!(
            (e.sqlstate(), e.to_string().as_str()),
            (
                "42601",
                "wrong number of parameters for prepared statement \"p\""
            )
        );
        for (sql, code) in [
            ("EXECUTE p(x)", "42703"),
            ("EXECUTE p(t.x + 1)", "42P01"),
            ("EXECUTE p((SELECT 1))", "0A000"),
            ("EXECUTE p(count(*))", "42803"),
            ("EXECUTE p(row_number() OVER ())", "42P20"),
            ("EXECUTE p(coalesce(NULL, abs(-3)))", ""),
        ] {
            match run(&p, sql) {
                Ok(_) => assert_eq!(code, "", "{sql}"),
                Err(e) => assert_eq!(e.sqlstate(), code, "{sql}: {e}"),
            }
        }
    }
}
