// The driver matrix (tests/driver_matrix.rs) for node-postgres (`pg`) and postgres.js
// (`postgres`): the 12 scenarios of the matrix contract, each written the way an application
// using that driver would write it, each asserting values, row counts and SQLSTATEs. Prints
// `CELL <scenario> ok` per scenario and then `matrix done`; on the first failure prints what
// was expected and what came back, and exits non-zero.
//   pg:       named queries, queries queued without awaiting on one client, pg.Pool of 20,
//             Knex-style pg_cancel_backend(pid) from a second client, pg-copy-streams COPY,
//             statement_timeout by SET and by connection option.
//   postgres: its default prepare:true, sql(rows) multi-row VALUES, sql.begin, sql.reserve(),
//             query.cancel(), .writable() COPY, statement_timeout by SET and by connection option.
//
// usage: node matrix.mjs pg|postgres URL ID0,ID1,ID2 BATCH_ID[,BATCH_ID...]
import pg from 'pg';
import postgres from 'postgres';
import pgCopyStreams from 'pg-copy-streams';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';

const [driver, url, idList, batchList] = process.argv.slice(2);
if (!['pg', 'postgres'].includes(driver) || !url || !idList || !batchList) {
  console.error('usage: node matrix.mjs pg|postgres URL ID0,ID1,ID2 BATCH_ID[,BATCH_ID...]');
  process.exit(2);
}
const IDS = idList.split(',').map(Number);
const BATCH_IDS = batchList.split(',').map(Number);
if (IDS.length !== 3 || BATCH_IDS.length !== 50) {
  console.error(`need 3 IDS and 50 BATCH_IDS, got ${IDS.length} and ${BATCH_IDS.length}`);
  process.exit(2);
}

const show = (x) => JSON.stringify(x, (_, v) => (typeof v === 'bigint' ? `${v}n` : v));
const assert = (ok, what) => { if (!ok) throw new Error(`check failed: ${what}`); };
const eq = (got, want, what) => assert(show(got) === show(want), `${what}: expected ${show(want)}, got ${show(got)}`);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// Runs `fn`, which must fail with SQLSTATE `code`; returns the error and how long it took.
async function expectCode(code, what, fn) {
  const t0 = Date.now();
  try {
    await fn();
  } catch (e) {
    assert(e.code === code, `${what}: expected SQLSTATE ${code}, got ${e.code} (${e.message})`);
    return { error: e, ms: Date.now() - t0 };
  }
  throw new Error(`check failed: ${what}: expected SQLSTATE ${code}, but it succeeded`);
}

const MULTI = Array.from({ length: 100 }, (_, i) => 1001 + i);
const COPY_IDS = Array.from({ length: 300 }, (_, i) => 2001 + i);
const CONC_IDS = Array.from({ length: 20 }, (_, i) => 3001 + i);
const RUN_MS = 3000;

// ---------------------------------------------------------------- node-postgres
function pgCells() {
  let c; // the main client, connected in `connect`
  const one = async (text, values) => (await c.query(text, values)).rows;
  const vOf = async (id) => (await c.query('SELECT v FROM items WHERE id = $1', [id])).rows.map((r) => r.v);
  const newClient = async (extra = {}) => {
    const k = new pg.Client({ connectionString: url, ...extra });
    await k.connect();
    return k;
  };

  // BEGIN ... COMMIT / ROLLBACK with node-postgres (it has no transaction helper).
  async function txnCells(ids, tag) {
    const setV = async (v) => {
      for (const id of ids) eq((await c.query('UPDATE items SET v = $1 WHERE id = $2', [v, id])).rowCount, 1, `UPDATE ${id} in transaction`);
    };
    const c1 = `c${tag}`;
    // a) commit
    await c.query('BEGIN');
    await setV(c1);
    await c.query('COMMIT');
    for (const id of ids) eq(await vOf(id), [c1], `after COMMIT, v of ${id}`);
    // b) rollback
    await c.query('BEGIN');
    await setV(`r${tag}`);
    for (const id of ids) eq(await vOf(id), [`r${tag}`], `inside the transaction, v of ${id}`);
    await c.query('ROLLBACK');
    for (const id of ids) eq(await vOf(id), [c1], `after ROLLBACK, v of ${id}`);
    // c) an error inside the transaction, then ROLLBACK
    await c.query('BEGIN');
    await setV(`e${tag}`);
    const dup = ids[ids.length - 1];
    await expectCode('23505', `duplicate INSERT of ${dup} in transaction`, () =>
      c.query('INSERT INTO items (id, grp, v) VALUES ($1, $2, $3)', [dup, 0, 'dup']));
    await expectCode('25P02', 'statement after the error in the aborted transaction', () => c.query('SELECT 1'));
    await c.query('ROLLBACK');
    for (const id of ids) eq(await vOf(id), [c1], `after error + ROLLBACK, v of ${id}`);
    eq(await one('SELECT 1 AS one'), [{ one: 1 }], 'SELECT 1 after the failed transaction');
  }

  return {
    async connect() {
      c = await newClient();
      eq(await one('SELECT 1 AS one'), [{ one: 1 }], 'SELECT 1');
      const [{ server_version: sv }] = await one('SHOW server_version');
      assert(typeof sv === 'string' && sv.length > 0, `server_version non-empty, got ${show(sv)}`);
      assert(c.processID > 0, `BackendKeyData process id, got ${c.processID}`);
    },

    async ddl() {
      await c.query('DROP TABLE IF EXISTS items');
      await c.query('CREATE TABLE items (id bigint PRIMARY KEY, grp int NOT NULL, v text)');
      eq(await one('SELECT count(*)::int AS n FROM items'), [{ n: 0 }], 'count(*) of the new table');
    },

    async crud() {
      for (const id of IDS) {
        const ins = await c.query('INSERT INTO items (id, grp, v) VALUES ($1, $2, $3)', [id, 1, `v${id}`]);
        eq(ins.rowCount, 1, `INSERT ${id} row count`);
        eq(await vOf(id), [`v${id}`], `SELECT v of ${id}`);
        const up = await c.query('UPDATE items SET v = $1 WHERE id = $2', [`u${id}`, id]);
        eq(up.rowCount, 1, `UPDATE ${id} row count`);
        eq(await vOf(id), [`u${id}`], `SELECT v of ${id} after UPDATE`);
      }
      const del = await c.query('DELETE FROM items WHERE id = $1', [IDS[2]]);
      eq(del.rowCount, 1, `DELETE ${IDS[2]} row count`);
      eq(await vOf(IDS[2]), [], `SELECT of deleted ${IDS[2]}`);
      const re = await c.query('INSERT INTO items (id, grp, v) VALUES ($1, $2, $3)', [IDS[2], 1, `u${IDS[2]}`]);
      eq(re.rowCount, 1, `re-INSERT ${IDS[2]} row count`);
      const ret = await c.query('INSERT INTO items (id, grp, v) VALUES ($1, $2, $3) RETURNING id', [900, 1, 'v900']);
      eq(ret.rows.map((r) => r.id), ['900'], 'INSERT ... RETURNING id (bigint as text)');
      eq((await c.query('DELETE FROM items WHERE id = $1', [900])).rowCount, 1, 'DELETE 900 row count');
    },

    async prepared() {
      for (let i = 0; i < 100; i++) {
        const id = IDS[i % 3];
        const r = await c.query({ name: 'mx_item_v', text: 'SELECT v FROM items WHERE id = $1', values: [id] });
        eq(r.rows.map((x) => x.v), [`u${id}`], `named SELECT v of ${id}, execution ${i + 1}`);
      }
      for (let i = 0; i < 30; i++) {
        const id = IDS[i % 3];
        const r = await c.query({ name: 'mx_bump_grp', text: 'UPDATE items SET grp = grp + 1 WHERE id = $1', values: [id] });
        eq(r.rowCount, 1, `named UPDATE of ${id}, execution ${i + 1}`);
      }
      const r = await c.query('SELECT id::int AS id, grp FROM items WHERE id = ANY($1) ORDER BY id', [IDS]);
      eq(r.rows, [...IDS].sort((a, b) => a - b).map((id) => ({ id, grp: 11 })), 'grp of IDS after 10 increments each');
    },

    async multi_shard_read() {
      for (const id of MULTI) {
        const r = await c.query('INSERT INTO items (id, grp, v) VALUES ($1, $2, $3)', [id, id % 5, `m${id}`]);
        eq(r.rowCount, 1, `INSERT ${id} row count`);
      }
      eq(await one('SELECT count(*) AS n FROM items WHERE id BETWEEN $1 AND $2', [1001, 1100]), [{ n: '100' }], 'count between');
      eq(await one('SELECT grp, count(*) FROM items WHERE id BETWEEN 1001 AND 1100 GROUP BY grp ORDER BY grp'),
        [0, 1, 2, 3, 4].map((grp) => ({ grp, count: '20' })), 'GROUP BY grp');
      eq((await one('SELECT id FROM items WHERE id BETWEEN 1001 AND 1100 ORDER BY id DESC LIMIT 3')).map((r) => r.id),
        ['1100', '1099', '1098'], 'ORDER BY id DESC LIMIT 3');
      eq(await one('SELECT sum(id) FROM items WHERE id BETWEEN 1001 AND 1100'), [{ sum: '105050' }], 'sum(id)');
      const any = await one('SELECT id, v FROM items WHERE id = ANY($1)', [[1001, 1050, 1099]]);
      eq(any.map((r) => [Number(r.id), r.v]).sort((a, b) => a[0] - b[0]),
        [[1001, 'm1001'], [1050, 'm1050'], [1099, 'm1099']], 'id = ANY($1) with an array');
    },

    txn_one_shard: () => txnCells([IDS[0]], 1),
    txn_two_shards: () => txnCells([IDS[0], IDS[1]], 2),

    async batch() {
      // node-postgres queues queries sent without awaiting and runs them back to back.
      const pending = BATCH_IDS.map((id) => c.query('INSERT INTO items (id, grp, v) VALUES ($1, $2, $3)', [id, 7, `b${id}`]));
      const results = await Promise.all(pending);
      eq(results.map((r) => r.rowCount), BATCH_IDS.map(() => 1), 'row count of each queued INSERT');
      eq(await one('SELECT count(*)::int AS n FROM items WHERE grp = 7'), [{ n: 50 }], 'count of grp 7');
      eq((await c.query('DELETE FROM items WHERE grp = $1', [7])).rowCount, 50, 'DELETE grp 7 row count');
    },

    async copy() {
      const stream = c.query(pgCopyStreams.from('COPY items (id, grp, v) FROM STDIN'));
      await pipeline(Readable.from(COPY_IDS.map((id) => `${id}\t8\tc${id}\n`)), stream);
      eq(stream.rowCount, 300, 'COPY row count (CommandComplete)');
      eq(await one('SELECT count(*)::int AS n FROM items WHERE grp = 8'), [{ n: 300 }], 'count of grp 8');
      eq(await vOf(2150), ['c2150'], 'v of 2150');
    },

    async concurrency() {
      for (const id of CONC_IDS) {
        eq((await c.query('INSERT INTO items (id, grp, v) VALUES ($1, $2, $3)', [id, 0, `w${id}`])).rowCount, 1, `INSERT ${id}`);
      }
      const pool = new pg.Pool({ connectionString: url, max: 20 });
      let poolError = null;
      pool.on('error', (e) => { poolError = e; });
      try {
        // Each worker checks out its own connection for the whole run.
        const workers = await Promise.all(CONC_IDS.map(() => pool.connect()));
        eq(pool.totalCount, 20, 'pool connections');
        const stop = Date.now() + RUN_MS;
        const counts = await Promise.all(workers.map(async (w, i) => {
          const id = CONC_IDS[i];
          let n = 0;
          while (Date.now() < stop) {
            const up = await w.query('UPDATE items SET grp = grp + 1 WHERE id = $1', [id]);
            eq(up.rowCount, 1, `worker ${i} UPDATE row count`);
            n++;
            const r = await w.query('SELECT grp FROM items WHERE id = $1', [id]);
            eq(r.rows, [{ grp: n }], `worker ${i} reads its own count`);
          }
          return n;
        }));
        workers.forEach((w) => w.release());
        const rows = await one('SELECT id::int AS id, grp FROM items WHERE id BETWEEN 3001 AND 3020 ORDER BY id');
        eq(rows, CONC_IDS.map((id, i) => ({ id, grp: counts[i] })), 'each row grp = its worker count');
        const ops = counts.reduce((a, b) => a + b, 0);
        assert(ops > 0, `some updates ran, got ${ops}`);
        assert(poolError === null, `pool error: ${poolError && poolError.message}`);
        console.log(`concurrency ops=${ops}`);
      } finally {
        await pool.end();
      }
    },

    async cancel() {
      // Knex-style: another connection cancels the query by the first one's backend pid.
      const [{ pid }] = await one('SELECT pg_backend_pid() AS pid');
      eq(pid, c.processID, 'pg_backend_pid() is the BackendKeyData process id');
      const killer = await newClient();
      try {
        const t0 = Date.now();
        const slow = c.query('SELECT pg_sleep(5)').then(() => null, (e) => e);
        await sleep(300);
        const k = await killer.query('SELECT pg_cancel_backend($1) AS cancelled', [pid]);
        eq(k.rows, [{ cancelled: true }], 'pg_cancel_backend($1) result');
        const e = await slow;
        const ms = Date.now() - t0;
        assert(e !== null, 'pg_sleep(5) was cancelled (it completed instead)');
        eq(e.code, '57014', `SQLSTATE of the cancelled query (${e.message})`);
        assert(ms < 3000, `cancelled query ended in < 3 s, took ${ms} ms`);
        eq(await one('SELECT 1 AS one'), [{ one: 1 }], 'SELECT 1 on the cancelled connection');
      } finally {
        await killer.end();
      }
    },

    async statement_timeout() {
      await c.query('SET statement_timeout = 300');
      const { ms } = await expectCode('57014', 'pg_sleep(2) under statement_timeout = 300', () => c.query('SELECT pg_sleep(2)'));
      assert(ms < 1500, `statement_timeout fired in < 1.5 s, took ${ms} ms`);
      await c.query('RESET statement_timeout');
      eq(await one('SELECT pg_sleep(0.5)::text AS slept'), [{ slept: '' }], 'pg_sleep(0.5) after RESET');
      // The same through connection options: node-postgres' statement_timeout and -c options.
      for (const opt of [{ statement_timeout: 300 }, { options: '-c statement_timeout=300' }]) {
        const k = await newClient(opt);
        try {
          eq((await k.query('SHOW statement_timeout')).rows, [{ statement_timeout: '300ms' }], `SHOW statement_timeout with ${show(opt)}`);
          const t = await expectCode('57014', `pg_sleep(2) with ${show(opt)}`, () => k.query('SELECT pg_sleep(2)'));
          assert(t.ms < 1500, `statement_timeout (${show(opt)}) fired in < 1.5 s, took ${t.ms} ms`);
          eq((await k.query('SELECT 1 AS one')).rows, [{ one: 1 }], `SELECT 1 after the timeout with ${show(opt)}`);
        } finally {
          await k.end();
        }
      }
    },

    async done() { await c.end(); },
  };
}

// ---------------------------------------------------------------- postgres.js
function postgresCells() {
  let sql; // the app's pool, created in `connect`; prepare: true is the default
  const vOf = async (id, q = sql) => (await q`SELECT v FROM items WHERE id = ${id}`).map((r) => r.v);
  class Rollback extends Error {}

  async function txnCells(ids, tag) {
    const setV = async (tx, v) => {
      for (const id of ids) eq((await tx`UPDATE items SET v = ${v} WHERE id = ${id}`).count, 1, `UPDATE ${id} in transaction`);
    };
    const c1 = `c${tag}`;
    // a) commit
    await sql.begin(async (tx) => { await setV(tx, c1); });
    for (const id of ids) eq(await vOf(id), [c1], `after commit, v of ${id}`);
    // b) rollback: throwing out of sql.begin rolls back
    const rb = await sql.begin(async (tx) => {
      await setV(tx, `r${tag}`);
      for (const id of ids) eq(await vOf(id, tx), [`r${tag}`], `inside the transaction, v of ${id}`);
      throw new Rollback();
    }).then(() => null, (e) => e);
    assert(rb instanceof Rollback, `sql.begin rejected with the thrown error, got ${rb}`);
    for (const id of ids) eq(await vOf(id), [c1], `after rollback, v of ${id}`);
    // c) a failing statement inside the transaction; sql.begin rolls back and rejects with it
    const dup = ids[ids.length - 1];
    await expectCode('23505', `duplicate INSERT of ${dup} in sql.begin`, () => sql.begin(async (tx) => {
      await setV(tx, `e${tag}`);
      await tx`INSERT INTO items (id, grp, v) VALUES (${dup}, 0, 'dup')`;
    }));
    for (const id of ids) eq(await vOf(id), [c1], `after error + rollback, v of ${id}`);
    eq(await sql`SELECT 1 AS one`, [{ one: 1 }], 'SELECT 1 after the failed transaction');
  }

  return {
    async connect() {
      sql = postgres(url, { max: 4, onnotice: () => {} });
      eq(await sql`SELECT 1 AS one`, [{ one: 1 }], 'SELECT 1');
      const [{ server_version: sv }] = await sql`SHOW server_version`;
      assert(typeof sv === 'string' && sv.length > 0, `SHOW server_version non-empty, got ${show(sv)}`);
      const ps = sql.parameters.server_version;
      assert(typeof ps === 'string' && ps.length > 0, `ParameterStatus server_version non-empty, got ${show(ps)}`);
    },

    async ddl() {
      await sql`DROP TABLE IF EXISTS items`;
      await sql`CREATE TABLE items (id bigint PRIMARY KEY, grp int NOT NULL, v text)`;
      eq(await sql`SELECT count(*)::int AS n FROM items`, [{ n: 0 }], 'count(*) of the new table');
    },

    async crud() {
      for (const id of IDS) {
        eq((await sql`INSERT INTO items (id, grp, v) VALUES (${id}, ${1}, ${`v${id}`})`).count, 1, `INSERT ${id} row count`);
        eq(await vOf(id), [`v${id}`], `SELECT v of ${id}`);
        eq((await sql`UPDATE items SET v = ${`u${id}`} WHERE id = ${id}`).count, 1, `UPDATE ${id} row count`);
        eq(await vOf(id), [`u${id}`], `SELECT v of ${id} after UPDATE`);
      }
      eq((await sql`DELETE FROM items WHERE id = ${IDS[2]}`).count, 1, `DELETE ${IDS[2]} row count`);
      eq(await vOf(IDS[2]), [], `SELECT of deleted ${IDS[2]}`);
      eq((await sql`INSERT INTO items (id, grp, v) VALUES (${IDS[2]}, ${1}, ${`u${IDS[2]}`})`).count, 1, `re-INSERT ${IDS[2]}`);
      const ret = await sql`INSERT INTO items (id, grp, v) VALUES (${900}, ${1}, ${'v900'}) RETURNING id`;
      eq(ret.map((r) => r.id), ['900'], 'INSERT ... RETURNING id (bigint as text)');
      eq((await sql`DELETE FROM items WHERE id = ${900}`).count, 1, 'DELETE 900 row count');
    },

    async prepared() {
      // prepare: true (the default) makes every tagged query a named, cached statement.
      for (let i = 0; i < 100; i++) {
        const id = IDS[i % 3];
        eq(await vOf(id), [`u${id}`], `prepared SELECT v of ${id}, execution ${i + 1}`);
      }
      for (let i = 0; i < 30; i++) {
        const id = IDS[i % 3];
        eq((await sql`UPDATE items SET grp = grp + 1 WHERE id = ${id}`).count, 1, `prepared UPDATE of ${id}, execution ${i + 1}`);
      }
      const rows = await sql`SELECT id::int AS id, grp FROM items WHERE id = ANY(${IDS}) ORDER BY id`;
      eq(rows, [...IDS].sort((a, b) => a - b).map((id) => ({ id, grp: 11 })), 'grp of IDS after 10 increments each');
    },

    async multi_shard_read() {
      // One multi-row VALUES outside a transaction: the proxy splits it by key.
      const rows = MULTI.map((id) => ({ id, grp: id % 5, v: `m${id}` }));
      eq((await sql`INSERT INTO items ${sql(rows, 'id', 'grp', 'v')}`).count, 100, 'multi-row INSERT row count');
      eq(await sql`SELECT count(*) AS n FROM items WHERE id BETWEEN ${1001} AND ${1100}`, [{ n: '100' }], 'count between');
      eq(await sql`SELECT grp, count(*) FROM items WHERE id BETWEEN 1001 AND 1100 GROUP BY grp ORDER BY grp`,
        [0, 1, 2, 3, 4].map((grp) => ({ grp, count: '20' })), 'GROUP BY grp');
      eq((await sql`SELECT id FROM items WHERE id BETWEEN 1001 AND 1100 ORDER BY id DESC LIMIT 3`).map((r) => r.id),
        ['1100', '1099', '1098'], 'ORDER BY id DESC LIMIT 3');
      eq(await sql`SELECT sum(id) FROM items WHERE id BETWEEN 1001 AND 1100`, [{ sum: '105050' }], 'sum(id)');
      const any = await sql`SELECT id, v FROM items WHERE id = ANY(${[1001, 1050, 1099]})`;
      eq(any.map((r) => [Number(r.id), r.v]).sort((a, b) => a[0] - b[0]),
        [[1001, 'm1001'], [1050, 'm1050'], [1099, 'm1099']], 'id = ANY(array)');
    },

    txn_one_shard: () => txnCells([IDS[0]], 1),
    txn_two_shards: () => txnCells([IDS[0], IDS[1]], 2),

    async batch() {
      const rows = BATCH_IDS.map((id) => ({ id, grp: 7, v: `b${id}` }));
      eq((await sql`INSERT INTO items ${sql(rows, 'id', 'grp', 'v')}`).count, 50, 'bulk INSERT row count');
      eq(await sql`SELECT count(*)::int AS n FROM items WHERE grp = 7`, [{ n: 50 }], 'count of grp 7');
      eq((await sql`DELETE FROM items WHERE grp = ${7}`).count, 50, 'DELETE grp 7 row count');
    },

    async copy() {
      const writable = await sql`COPY items (id, grp, v) FROM STDIN`.writable();
      await pipeline(Readable.from(COPY_IDS.map((id) => `${id}\t8\tc${id}\n`)), writable);
      eq(await sql`SELECT count(*)::int AS n FROM items WHERE grp = 8`, [{ n: 300 }], 'count of grp 8');
      eq(await vOf(2150), ['c2150'], 'v of 2150');
    },

    async concurrency() {
      for (const id of CONC_IDS) {
        eq((await sql`INSERT INTO items (id, grp, v) VALUES (${id}, ${0}, ${`w${id}`})`).count, 1, `INSERT ${id}`);
      }
      const pool = postgres(url, { max: 20, onnotice: () => {} });
      try {
        // Each worker reserves its own connection for the whole run.
        const workers = await Promise.all(CONC_IDS.map(() => pool.reserve()));
        const stop = Date.now() + RUN_MS;
        const counts = await Promise.all(workers.map(async (w, i) => {
          const id = CONC_IDS[i];
          let n = 0;
          while (Date.now() < stop) {
            eq((await w`UPDATE items SET grp = grp + 1 WHERE id = ${id}`).count, 1, `worker ${i} UPDATE row count`);
            n++;
            eq(await w`SELECT grp FROM items WHERE id = ${id}`, [{ grp: n }], `worker ${i} reads its own count`);
          }
          return n;
        }));
        workers.forEach((w) => w.release());
        const rows = await sql`SELECT id::int AS id, grp FROM items WHERE id BETWEEN 3001 AND 3020 ORDER BY id`;
        eq(rows, CONC_IDS.map((id, i) => ({ id, grp: counts[i] })), 'each row grp = its worker count');
        const ops = counts.reduce((a, b) => a + b, 0);
        assert(ops > 0, `some updates ran, got ${ops}`);
        console.log(`concurrency ops=${ops}`);
      } finally {
        await pool.end({ timeout: 5 });
      }
    },

    async cancel() {
      const t0 = Date.now();
      const q = sql`SELECT pg_sleep(5)`;
      setTimeout(() => q.cancel(), 300);
      const { error, ms } = await expectCode('57014', 'query.cancel() of pg_sleep(5)', () => q);
      assert(Date.now() - t0 < 3000, `cancelled query ended in < 3 s, took ${ms} ms (${error.message})`);
      eq(await sql`SELECT 1 AS one`, [{ one: 1 }], 'SELECT 1 after the cancel');
    },

    async statement_timeout() {
      // SET is per connection: reserve one from the pool.
      const c = await sql.reserve();
      try {
        await c`SET statement_timeout = 300`;
        const { ms } = await expectCode('57014', 'pg_sleep(2) under statement_timeout = 300', () => c`SELECT pg_sleep(2)`);
        assert(ms < 1500, `statement_timeout fired in < 1.5 s, took ${ms} ms`);
        await c`RESET statement_timeout`;
        eq(await c`SELECT pg_sleep(0.5)::text AS slept`, [{ slept: '' }], 'pg_sleep(0.5) after RESET');
      } finally {
        c.release();
      }
      // The same as a connection (startup) parameter.
      const st = postgres(url, { max: 1, onnotice: () => {}, connection: { statement_timeout: 300 } });
      try {
        eq(await st`SHOW statement_timeout`, [{ statement_timeout: '300ms' }], 'SHOW statement_timeout with connection option');
        const t = await expectCode('57014', 'pg_sleep(2) with connection statement_timeout', () => st`SELECT pg_sleep(2)`);
        assert(t.ms < 1500, `connection statement_timeout fired in < 1.5 s, took ${t.ms} ms`);
        eq(await st`SELECT 1 AS one`, [{ one: 1 }], 'SELECT 1 after the timeout');
      } finally {
        await st.end({ timeout: 5 });
      }
    },

    async done() { await sql.end({ timeout: 5 }); },
  };
}

// ---------------------------------------------------------------- run
const SCENARIOS = ['connect', 'ddl', 'crud', 'prepared', 'multi_shard_read', 'txn_one_shard',
  'txn_two_shards', 'batch', 'copy', 'concurrency', 'cancel', 'statement_timeout'];
const cells = driver === 'pg' ? pgCells() : postgresCells();
let current = 'start';
const watchdog = setTimeout(() => {
  console.error(`FAILED ${driver} ${current}: still running after 38 s (hang?)`);
  process.exit(1);
}, 38000);
watchdog.unref();
try {
  for (const name of SCENARIOS) {
    current = name;
    const t0 = Date.now();
    await cells[name]();
    if (process.env.MATRIX_TIMES) console.error(`${name} ${Date.now() - t0} ms`);
    console.log(`CELL ${name} ok`);
  }
  current = 'closing';
  await cells.done();
} catch (e) {
  console.error(`FAILED ${driver} ${current}: ${e.message}`);
  if (e.code) console.error(`  SQLSTATE ${e.code}${e.detail ? ` detail: ${e.detail}` : ''}`);
  if (e.stack) console.error(e.stack.split('\n').slice(1, 4).join('\n'));
  process.exit(1);
}
console.log('matrix done');
process.exit(0);
