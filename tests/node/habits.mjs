// node-postgres and postgres.js through the proxy (issue 16), with keys on every shard.
// postgres.js prepares with Parse, Describe, Flush and then Bind, Execute, Sync, outside and
// inside transactions; node-postgres sends unnamed and named statements, and Knex-style
// `pg_cancel_backend(processID)` from a second connection cancels a running query.
//
// usage: node habits.mjs URL ID[,ID...]   (rows named user-<id>)
import pg from 'pg';
import postgres from 'postgres';

const [url, idList] = process.argv.slice(2);
const ids = idList.split(',').map(Number);
const assert = (ok, what) => { if (!ok) throw new Error(`check failed: ${what}`); };

// postgres.js
const sql = postgres(url, { max: 4, prepare: true });
for (let round = 0; round < 3; round++) {
  for (const id of ids) {
    const rows = await sql`SELECT name FROM users WHERE id = ${id}`;
    assert(rows.length === 1 && rows[0].name === `user-${id}`, `postgres.js read ${id}`);
  }
}
await sql.begin(async (tx) => {
  for (const id of ids) {
    const rows = await tx`SELECT name FROM users WHERE id = ${id} AND true`;
    assert(rows[0].name === `user-${id}`, `postgres.js read ${id} in a transaction`);
    await tx`UPDATE users SET name = name WHERE id = ${id}`;
  }
});
let failed = false;
try {
  await sql.begin(async (tx) => {
    await tx`UPDATE users SET name = 'doomed' WHERE id = ${ids[0]}`;
    await tx`SELECT 1/0`;
  });
} catch (e) {
  failed = e.code === '22012';
}
assert(failed, 'postgres.js transaction error');
const after = await sql`SELECT name FROM users WHERE id = ${ids[0]}`;
assert(after[0].name === `user-${ids[0]}`, 'postgres.js rollback');
const [{ count }] = await sql`SELECT count(*)::int AS count FROM users`;
assert(count === ids.length, `postgres.js count ${count}`);
await sql.end();

// node-postgres
const c = new pg.Client(url);
await c.connect();
for (const id of ids) {
  const r = await c.query('SELECT name FROM users WHERE id = $1', [id]);
  assert(r.rows[0].name === `user-${id}`, `pg read ${id}`);
  const n = await c.query({ name: 'by-id', text: 'SELECT name FROM users WHERE id = $1', values: [id] });
  assert(n.rows[0].name === `user-${id}`, `pg named read ${id}`);
}
await c.query('BEGIN');
await c.query('UPDATE users SET name = $1 WHERE id = $2', ['tx', ids[1]]);
await c.query('SAVEPOINT s');
await c.query('UPDATE users SET name = $1 WHERE id = $2', ['gone', ids[2]]);
await c.query('ROLLBACK TO SAVEPOINT s');
await c.query('ROLLBACK');
const back = await c.query('SELECT name FROM users WHERE id = ANY($1) ORDER BY id', [[ids[1], ids[2]]]);
assert(back.rows.every((r) => r.name.startsWith('user-')), 'pg rollback');
// Knex cancels a timed-out query by its connection's processID from another connection.
const killer = new pg.Client(url);
await killer.connect();
const slow = c.query('SELECT pg_sleep(20)').then(() => 'finished', (e) => e.code);
await new Promise((r) => setTimeout(r, 500));
const cancelled = await killer.query(`SELECT pg_cancel_backend(${c.processID})`);
assert(cancelled.rows[0].pg_cancel_backend === true, 'pg_cancel_backend answered true');
assert((await slow) === '57014', 'the slow query was cancelled');
const me = await c.query('SELECT pg_backend_pid() AS pid');
assert(me.rows[0].pid === c.processID, 'pg_backend_pid() is the processID');
await killer.end();
// Knex's batchInsert (issue 19): a multi-row INSERT with parameters, rows on every shard,
// inside a transaction; a rolled-back one leaves nothing, a committed one every row.
const batch = (base) => {
  const values = ids.map((_, i) => `($${2 * i + 1}, $${2 * i + 2})`).join(', ');
  const params = ids.flatMap((id, i) => [base + id * 10 + i, `batch-${base}`]);
  return [`INSERT INTO users (id, name) VALUES ${values} RETURNING id`, params];
};
await c.query('BEGIN');
const [t1, p1] = batch(100000);
const ins = await c.query(t1, p1);
assert(ins.rowCount === ids.length, `knex batch rowCount ${ins.rowCount}`);
assert(ins.rows.map((r) => Number(r.id)).join() === p1.filter((_, i) => i % 2 === 0).join(), 'RETURNING in row order');
await c.query('ROLLBACK');
await c.query('BEGIN');
const [t2, p2] = batch(200000);
await c.query(t2, p2);
await c.query('COMMIT');
const kept = await c.query("SELECT count(*)::int AS n FROM users WHERE name LIKE 'batch-%'");
assert(kept.rows[0].n === ids.length, `knex batch committed ${kept.rows[0].n}`);
await c.query("DELETE FROM users WHERE name LIKE 'batch-%'");
await c.end();
console.log('node checks passed');
