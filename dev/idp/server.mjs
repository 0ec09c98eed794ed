// A real OpenID Provider (panva/oidc-provider) for token-worker's tests, demo and benchmark.
//
// It serves the client_credentials grant with the token endpoint at the Keycloak path
// token-worker uses by default, so the worker talks to it exactly as to a Keycloak realm.
// Settings come from the environment so that tests can start several differently shaped
// providers:
//   IDP_PORT        port on 127.0.0.1 (0 picks a free one; the chosen one is printed)
//   IDP_CLIENTS     JSON list of oidc-provider client metadata (defaults below)
//   IDP_TOKEN_TTL   access token lifetime in seconds (default 300)
//   IDP_DELAY_MS    delay added before every token answer, to play a slow IdP (default 0)
//   IDP_TOKEN_PATH  token endpoint path (default the Keycloak realm path)
// GET /_test/stats answers {"token_calls": N}: how many token requests arrived, so tests and
// the benchmark can count IdP calls.
import Provider from 'oidc-provider';

const port = Number(process.env.IDP_PORT ?? 9400);
const tokenPath = process.env.IDP_TOKEN_PATH ?? '/realms/phoenix/protocol/openid-connect/token';
const ttl = Number(process.env.IDP_TOKEN_TTL ?? 300);
const delayMs = Number(process.env.IDP_DELAY_MS ?? 0);
const defaultClients = [
  {
    client_id: 'demo-service',
    client_secret: 'demo-secret-change-me',
    token_endpoint_auth_method: 'client_secret_post',
  },
  {
    client_id: 'basic-service',
    client_secret: 'basic-secret-change-me',
    token_endpoint_auth_method: 'client_secret_basic',
  },
];
const clients = (process.env.IDP_CLIENTS ? JSON.parse(process.env.IDP_CLIENTS) : defaultClients).map(
  (client) => ({ grant_types: ['client_credentials'], redirect_uris: [], response_types: [], ...client }),
);

const issuer = `http://127.0.0.1:${port}/realms/phoenix`;
const provider = new Provider(issuer, {
  clients,
  scopes: ['openid', 'profile', 'email', 'read', 'write', 'admin'],
  features: { clientCredentials: { enabled: true }, devInteractions: { enabled: false } },
  routes: { token: tokenPath },
  ttl: { ClientCredentials: ttl },
});
provider.proxy = false;

let tokenCalls = 0;
provider.use(async (ctx, next) => {
  if (ctx.path === '/_test/stats') {
    ctx.body = { token_calls: tokenCalls };
    return;
  }
  if (ctx.path === tokenPath && ctx.method === 'POST') {
    tokenCalls += 1;
    if (delayMs > 0) await new Promise((resolve) => setTimeout(resolve, delayMs));
  }
  await next();
});

const server = provider.listen(port, '127.0.0.1', () => {
  const { port: bound } = server.address();
  console.log(JSON.stringify({ listening: `http://127.0.0.1:${bound}`, token_path: tokenPath }));
});
const stop = () => server.close(() => process.exit(0));
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
