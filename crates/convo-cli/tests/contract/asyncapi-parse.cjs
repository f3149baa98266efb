// Parses schemas/asyncapi.json with the official AsyncAPI parser (installed by
// `just validators` into .tools/node), resolving the payloads' $refs to the
// JSON Schema files beside it. Prints the diagnostics; exit 1 on an error.
const { Parser, fromFile } = require('@asyncapi/parser');

async function main() {

  const path = process.argv[2];
const parser = new Parser();
const { document, diagnostics } = await fromFile(parser, path).parse();
const errors = diagnostics.filter((d) => d.severity === 0);
for (const d of diagnostics) {
  console.log(`${['error', 'warning', 'info', 'hint'][d.severity]} ${d.code} at ${d.path.join('/')}: ${d.message}`);
}
if (!document || errors.length) {
  console.log(`${errors.length} errors`);
  process.exit(1);
}
const channels = document.channels().all().length;
const operations = document.operations().all().length;
const messages = document.allMessages().all().length;
let resolved = 0;
for (const m of document.allMessages().all()) {
  const payload = m.payload();
  if (payload && (payload.type() || payload.oneOf() || payload.allOf() || payload.properties())) resolved += 1;
}
console.log(`parsed: ${channels} channels, ${operations} operations, ${messages} messages, ${resolved} payloads resolved`);
}

main().catch((e) => {
  console.log(`failed: ${e.stack || e}`);
  process.exit(1);
});
