// Discover services over NATS with the services client of nats.js (ADR-32), as an
// operator's tool would: `node discover.mjs nats://127.0.0.1:4222 [name] [id]`.
// Prints {"ping": [...], "info": [...], "stats": [...]} as JSON, one entry per instance.
import { connect } from 'nats';

const [url = 'nats://127.0.0.1:4222', name, id] = process.argv.slice(2);
const nc = await connect({ servers: url, name: 'svc-discovery' });
const client = nc.services.client({ maxWait: 400 });
const collect = async (verb) => {
  const found = [];
  try {
    for await (const response of await client[verb](name, id)) found.push(response);
  } catch (error) {
    if (!String(error?.code ?? error).includes('503')) throw error;  // 503: nobody answers
  }
  return found;
};
const result = { ping: await collect('ping'), info: await collect('info'), stats: await collect('stats') };
console.log(JSON.stringify(result));
await nc.close();
