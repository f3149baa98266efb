// Verifies received webhook deliveries with the `standardwebhooks` package
// (npm, the Standard Webhooks reference implementation), not convo's code.
// Input (stdin): {"secret": "whsec_…", "deliveries": [{"headers": {...}, "body": "..."}]}.
const { Webhook } = require('standardwebhooks');

let input = '';
process.stdin.on('data', (chunk) => { input += chunk; });
process.stdin.on('end', () => {
  const { secret, deliveries } = JSON.parse(input);
  const wh = new Webhook(secret);
  let verified = 0;
  for (const d of deliveries) {
    try {
      wh.verify(d.body, d.headers);
      verified += 1;
    } catch (e) {
      console.log(`refused ${d.headers['webhook-id']}: ${e.message}`);
      process.exit(1);
    }
  }
  // And a tampered body is refused.
  const d = deliveries[0];
  try {
    wh.verify(d.body.replace('}', ' }'), d.headers);
    console.log('a tampered body verified');
    process.exit(1);
  } catch (e) { /* expected */ }
  console.log(`verified ${verified}`);
});
