// LISTEN/NOTIFY through the proxy (issue 19) with node drivers: node-postgres's
// `client.on('notification')` and postgres.js's `sql.listen` / `sql.notify`; notifications
// sent inside a transaction arrive at its COMMIT.
//
// usage: node notify.mjs URL
import pg from 'pg';
import postgres from 'postgres';

const [url] = process.argv.slice(2);
const assert = (ok, what) => { if (!ok) throw new Error(`check failed: ${what}`); };
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// Resolves with the next notification (or null after `ms`).
function waiter(queue) {
  return (ms = 5000) => new Promise((resolve) => {
    const w = (n) => { clearTimeout(t); resolve(n); };
    const t = setTimeout(() => { queue.splice(queue.indexOf(w), 1); resolve(null); }, ms);
    queue.push(w);
  });
}

// node-postgres
const listener = new pg.Client(url);
await listener.connect();
const waiting = [];
const seen = [];
listener.on('notification', (n) => {
  const w = waiting.shift();
  if (w) w(n); else seen.push(n);
});
const next = (ms) => (seen.length ? Promise.resolve(seen.shift()) : waiter(waiting)(ms));
await listener.query('LISTEN node_chan');
const sender = new pg.Client(url);
await sender.connect();
await sender.query("NOTIFY node_chan, 'n1'");
let n = await next();
assert(n && n.channel === 'node_chan' && n.payload === 'n1' && n.processId > 0, `pg NOTIFY ${JSON.stringify(n)}`);
await sender.query('SELECT pg_notify($1, $2)', ['node_chan', 'n2']);
n = await next();
assert(n && n.payload === 'n2', `pg pg_notify ${JSON.stringify(n)}`);
await sender.query('BEGIN');
await sender.query("NOTIFY node_chan, 'n3'");
n = await next(300);
assert(n === null, 'pg before COMMIT');
await sender.query('COMMIT');
n = await next();
assert(n && n.payload === 'n3', `pg at COMMIT ${JSON.stringify(n)}`);
await listener.query('UNLISTEN node_chan');
await sender.query("NOTIFY node_chan, 'n4'");
n = await next(300);
assert(n === null, 'pg after UNLISTEN');
await listener.end();
await sender.end();

// postgres.js
const sql = postgres(url, { max: 2 });
const got = [];
const { unlisten } = await sql.listen('pjs_chan', (payload) => got.push(payload));
await sql.notify('pjs_chan', 'p1');
for (let i = 0; i < 100 && got.length === 0; i++) await sleep(50);
assert(got.length === 1 && got[0] === 'p1', `postgres.js listen ${JSON.stringify(got)}`);
await unlisten();
await sql.end();
console.log('notify checks passed');
