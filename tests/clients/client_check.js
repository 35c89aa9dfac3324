// node-postgres against the iasql server, driven by tests/test_clients.py.
// Usage: node client_check.js URL... ; prints one JSON object per URL, one per line.
'use strict'

const { Client } = require('pg')

async function check(url) {
  const client = new Client({ connectionString: url })
  const notices = []
  client.on('notice', (msg) => notices.push(msg.message))
  try {
    await client.connect()
  } catch (err) {
    return { connect_error: err.code || null, message: err.message }
  }
  const out = { tls: client.connection.stream.encrypted === true }
  try {
    // an iasql function, with a parameter (the extended protocol)
    const found = await client.query(
      'SELECT module_name FROM iasql_modules_list() WHERE module_name = $1',
      ['aws_account'],
    )
    out.function_rows = found.rows.map((row) => row.module_name)
    // a named prepared statement: parsed once, then Bind/Execute only
    out.prepared = []
    for (let i = 0; i < 8; i++) {
      const res = await client.query({
        name: 'modules_by_name',
        text: 'SELECT module_name, $2::int AS n FROM iasql_modules_list() WHERE module_name = $1',
        values: [i % 2 ? 'aws_sqs' : 'aws_s3', i],
      })
      out.prepared.push(res.rows.map((row) => [row.module_name, row.n]))
    }
    await client.query("DO $$BEGIN RAISE NOTICE 'hello from plpgsql'; END$$")
    out.notices = notices
    out.errors = []
    const failing = [
      ['SELECT * FROM iasql_install($1)', ['no_such_module']], // the engine's error
      ['SELECT 1/0', undefined], // Postgres's own, simple protocol
    ]
    for (const [text, values] of failing) {
      try {
        await client.query(text, values)
        out.errors.push(null)
      } catch (err) {
        out.errors.push(err.code)
      }
    }
    out.after_errors = (await client.query('SELECT $1::int + 1 AS v', [41])).rows[0].v
  } finally {
    await client.end()
  }
  return out
}

async function main() {
  for (const url of process.argv.slice(2)) {
    process.stdout.write(JSON.stringify(await check(url)) + '\n')
  }
}

main().catch((err) => {
  process.stderr.write(`${err.stack}\n`)
  process.exit(1)
})
