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
//   IDP_REALM       realm name (default phoenix)
// The provider is mounted under /realms/<realm>, as Keycloak lays a realm out: the issuer is
// http://127.0.0.1:<port>/realms/<realm>, discovery is at <issuer>/.well-known/openid-configuration
// and the token endpoint at <issuer>/protocol/openid-connect/token.
// GET /_test/stats answers {"token_calls": N}: how many token requests arrived, so tests and
// the benchmark can count IdP calls.
// Token introspection (RFC 7662) is on, at Keycloak's path
// <issuer>/protocol/openid-connect/token/introspect: any registered client (authenticated as
// at the token endpoint) may ask whether a token is genuine and for which client_id, so tests
// can check that a token handed out over NATS belongs to the credential it was asked for.
import http from 'node:http';
import Provider from 'oidc-provider';

const port = Number(process.env.IDP_PORT ?? 9400);
const realm = process.env.IDP_REALM ?? 'phoenix';
const mountPath = `/realms/${realm}`;
const tokenRoute = '/protocol/openid-connect/token';
const introspectionRoute = `${tokenRoute}/introspect`;
const tokenPath = mountPath + tokenRoute;
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

const issuer = `http://127.0.0.1:${port}${mountPath}`;
const provider = new Provider(issuer, {
  clients,
  scopes: ['openid', 'profile', 'email', 'read', 'write', 'admin'],
  features: {
    clientCredentials: { enabled: true },
    devInteractions: { enabled: false },
    // A development IdP: every authenticated client may introspect any token.
    introspection: { enabled: true, allowedPolicy: async () => true },
  },
  routes: { token: tokenRoute, introspection: introspectionRoute },
  ttl: { ClientCredentials: ttl },
});
provider.proxy = false;

let tokenCalls = 0;
provider.use(async (ctx, next) => {
  if (ctx.path === tokenRoute && ctx.method === 'POST') {
    tokenCalls += 1;
    if (delayMs > 0) await new Promise((resolve) => setTimeout(resolve, delayMs));
  }
  await next();
});

const callback = provider.callback();
const server = http.createServer((req, res) => {
  if (req.url === '/_test/stats') {
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ token_calls: tokenCalls }));
  } else if (req.url === mountPath || req.url.startsWith(`${mountPath}/`)) {
    req.originalUrl = req.url;
    req.url = req.url.slice(mountPath.length) || '/';
    callback(req, res);
  } else {
    res.writeHead(404, { 'content-type': 'application/json' });
    res.end('{"error":"not_found"}');
  }
});
server.keepAliveTimeout = 60_000;
server.listen(port, '127.0.0.1', () => {
  const { port: bound } = server.address();
  console.log(JSON.stringify({ listening: `http://127.0.0.1:${bound}`, token_path: tokenPath }));
});
const stop = () => server.close(() => process.exit(0));
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
