// A real OpenID Provider (panva/oidc-provider) for token-worker's tests, demo and benchmark.
//
// It serves the client_credentials grant with the token endpoint at the Keycloak path
// token-worker uses by default, so the worker talks to it exactly as to a Keycloak realm.
// Settings come from the environment so that tests can start several differently shaped
// providers:
//   IDP_PORT        port (0 picks a free one; the chosen one is printed)
//   IDP_HOST        address to listen on (default 127.0.0.1; ::1 for IPv6 loopback only).
//                   The issuer names it too, bracketed when IPv6: http://[::1]:<port>/...
//   IDP_CLIENTS     JSON list of oidc-provider client metadata (defaults below)
//   IDP_TOKEN_TTL   access token lifetime in seconds (default 300)
//   IDP_DELAY_MS    delay added before every token answer, to play a slow IdP (default 0)
//   IDP_REALM       realm name (default phoenix)
// The provider is mounted under /realms/<realm>, as Keycloak lays a realm out: the issuer is
// http://127.0.0.1:<port>/realms/<realm>, discovery is at <issuer>/.well-known/openid-configuration
// and the token endpoint at <issuer>/protocol/openid-connect/token.
// GET /_test/stats answers {"token_calls": N, ...}: how many token requests arrived, so tests
// and the benchmark can count IdP calls (more below).
// Token introspection (RFC 7662) is on, at Keycloak's path
// <issuer>/protocol/openid-connect/token/introspect: any registered client (authenticated as
// at the token endpoint) may ask whether a token is genuine and for which client_id, so tests
// can check that a token handed out over NATS belongs to the credential it was asked for.
//
// Optional modes (all off unless their variables are set; the defaults above are unchanged):
//
// private_key_jwt (RFC 7523) needs no switch: register a client with
//   {"client_id": "jwt-service", "token_endpoint_auth_method": "private_key_jwt",
//    "jwks": {"keys": [<public JWK>, ...]}}
// (RSA keys verify RS256/PS256, P-256 keys ES256; optionally pin one with
// "token_endpoint_auth_signing_alg"). The client_assertion must carry iss = sub = client_id,
// an aud naming the issuer or the token endpoint URL as the client reached it, a jti never
// used before by that client (replays are refused until exp + 15 s), and exp; oidc-provider
// accepts a 15 s clock skew and sets no upper bound on exp of its own:
//   IDP_ASSERTION_MAX_AGE  refuse (invalid_client) client assertions whose exp is more than
//                   this many seconds ahead of the IdP's clock (default: no limit)
//
// HTTPS, and tls_client_auth (RFC 8705):
//   IDP_TLS_CERT    PEM file: the server certificate (chain) -> the IdP serves HTTPS only and
//                   its issuer is https://...
//   IDP_TLS_KEY     PEM file: the server certificate's private key (required with IDP_TLS_CERT)
//   IDP_TLS_CLIENT_CA  PEM file of the CA(s) trusted for client certificates. With it, the
//                   server asks every client for a certificate without requiring one (clients
//                   without one keep working with secrets or assertions), and oidc-provider's
//                   features.mTLS.tlsClientAuth is on: a client registered with
//   {"client_id": "mtls-service", "token_endpoint_auth_method": "tls_client_auth",
//    "tls_client_auth_subject_dn": "CN=mtls-service,O=token-worker tests"}
// (or exactly one of tls_client_auth_san_dns / _san_uri / _san_ip / _san_email instead of
// the DN) authenticates by sending client_id in the form and presenting a certificate that
// chains to IDP_TLS_CLIENT_CA and matches. The DN is compared attribute by attribute, in any
// order, as RFC 4514 text (Python's x509.Name.rfc4514_string() output matches); a SAN value
// must equal one SAN entry of that type.
//
// Resource indicators (RFC 8707):
//   IDP_RESOURCES   resource indicators the IdP accepts, separated by commas or spaces, or *
//                   for any absolute URI (default: none, as oidc-provider's own default: a
//                   resource parameter gets invalid_target). A client_credentials request with
//                   resource=<one of them> gets a JWT access token (RS256) whose aud is that
//                   resource, scope limited to "read write admin"; two resources in one request
//                   get invalid_target (one per request for this grant). The Auth0-style
//                   audience parameter is not OAuth: oidc-provider ignores it (opaque token).
//
// GET /_test/stats answers
//   {"token_calls": N,                    every POST to the token endpoint, answered or not
//    "token_calls_by_auth_method": {...}, per registered auth method of the client that
//                                         authenticated (successful answers only)
//    "client_cert_token_calls": N,        token requests whose TLS connection presented a
//                                         client certificate
//    "last_token_request": {...} | null,  the newest of
//    "token_requests": [...]}             the last 100 token requests, oldest first: status,
//        error, error_description, error_detail (oidc-provider's reason for refusing the
//        client, which its answer leaves out), client_id, auth_method (registered method, when authenticated), presented
//        (what the request carried: client_secret_basic, client_secret_post,
//        client_assertion or none), assertion ({header, claims} of the client_assertion, not
//        its signature), tls, client_cert (bool), client_cert_subject, client_cert_authorized,
//        resource (list or null), audience, scope, grant_type, host (the Host header).
// POST /_test/reset zeroes all of it.
import fs from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import { X509Certificate } from 'node:crypto';
import Provider, { errors } from 'oidc-provider';

const port = Number(process.env.IDP_PORT ?? 9400);
const host = process.env.IDP_HOST || '127.0.0.1';
const realm = process.env.IDP_REALM ?? 'phoenix';
const mountPath = `/realms/${realm}`;
const tokenRoute = '/protocol/openid-connect/token';
const introspectionRoute = `${tokenRoute}/introspect`;
const tokenPath = mountPath + tokenRoute;
const ttl = Number(process.env.IDP_TOKEN_TTL ?? 300);
const delayMs = Number(process.env.IDP_DELAY_MS ?? 0);
const assertionMaxAge = process.env.IDP_ASSERTION_MAX_AGE ? Number(process.env.IDP_ASSERTION_MAX_AGE) : undefined;
const tlsCertFile = process.env.IDP_TLS_CERT || undefined;
const tlsKeyFile = process.env.IDP_TLS_KEY || undefined;
const clientCaFile = process.env.IDP_TLS_CLIENT_CA || undefined;
if (Boolean(tlsCertFile) !== Boolean(tlsKeyFile)) {
  throw new Error('IDP_TLS_CERT and IDP_TLS_KEY go together');
}
if (clientCaFile && !tlsCertFile) {
  throw new Error('IDP_TLS_CLIENT_CA needs IDP_TLS_CERT and IDP_TLS_KEY (client certificates need HTTPS)');
}
const tls = Boolean(tlsCertFile);
const mtls = Boolean(clientCaFile);
const resourcesSetting = (process.env.IDP_RESOURCES ?? '').trim();
const anyResource = resourcesSetting === '*';
const resources = new Set(anyResource ? [] : resourcesSetting.split(/[\s,]+/).filter(Boolean));
const resourceScope = 'read write admin';

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

// --- client certificates (tls_client_auth) -------------------------------------------------

// The certificate the client presented on this request's TLS connection, as PEM, or undefined.
function peerCertificatePem(ctx) {
  const socket = ctx.req.socket;
  if (!socket?.encrypted || typeof socket.getPeerCertificate !== 'function') return undefined;
  const peer = socket.getPeerCertificate(true);
  if (!peer?.raw) return undefined;
  const body = peer.raw.toString('base64').match(/.{1,64}/g).join('\n');
  return `-----BEGIN CERTIFICATE-----\n${body}\n-----END CERTIFICATE-----\n`;
}

// RFC 4514 text -> [[TYPE, value], ...], unescaping \, \+ \" \\ \< \> \; \= and \XX hex pairs.
const typeAliases = new Map([
  ['2.5.4.3', 'CN'], ['2.5.4.6', 'C'], ['2.5.4.7', 'L'], ['2.5.4.8', 'ST'], ['2.5.4.10', 'O'],
  ['2.5.4.11', 'OU'], ['2.5.4.9', 'STREET'], ['2.5.4.5', 'SERIALNUMBER'],
  ['0.9.2342.19200300.100.1.25', 'DC'], ['0.9.2342.19200300.100.1.1', 'UID'],
  ['1.2.840.113549.1.9.1', 'EMAILADDRESS'], ['E', 'EMAILADDRESS'],
]);
function splitUnescaped(text, separators) {
  const parts = [];
  let current = '';
  for (let i = 0; i < text.length; i += 1) {
    const char = text[i];
    if (char === '\\' && i + 1 < text.length) {
      current += char + text[i + 1];
      i += 1;
    } else if (separators.includes(char)) {
      parts.push(current);
      current = '';
    } else {
      current += char;
    }
  }
  parts.push(current);
  return parts;
}
function unescapeValue(value) {
  const bytes = [];
  for (let i = 0; i < value.length; i += 1) {
    if (value[i] === '\\' && /^[0-9a-fA-F]{2}$/.test(value.slice(i + 1, i + 3))) {
      bytes.push(parseInt(value.slice(i + 1, i + 3), 16));
      i += 2;
    } else if (value[i] === '\\' && i + 1 < value.length) {
      bytes.push(...Buffer.from(value[i + 1]));
      i += 1;
    } else {
      bytes.push(...Buffer.from(value[i]));
    }
  }
  return Buffer.from(bytes).toString('utf8');
}
function parseDn(text, separators) {
  return splitUnescaped(text, separators)
    .map((part) => part.trim())
    .filter(Boolean)
    .map((part) => {
      const eq = part.indexOf('=');
      if (eq < 1) return [part.toUpperCase(), ''];
      const type = part.slice(0, eq).trim().toUpperCase();
      return [typeAliases.get(type) ?? type, unescapeValue(part.slice(eq + 1).trim())];
    })
    .map(([type, value]) => `${type}=${value}`)
    .sort();
}
function subjectMatches(pem, property, expected) {
  const cert = new X509Certificate(pem);
  if (property === 'tls_client_auth_subject_dn') {
    // Node prints the subject one attribute per line (RFC 2253 escaping); the registered
    // value is RFC 4514 text (comma or plus separated). Same attributes, in any order.
    const actual = parseDn(cert.subject, '\n');
    const wanted = parseDn(expected, ',+');
    return actual.length === wanted.length && actual.every((item, i) => item === wanted[i]);
  }
  const prefix = {
    tls_client_auth_san_dns: 'DNS:',
    tls_client_auth_san_uri: 'URI:',
    tls_client_auth_san_ip: 'IP Address:',
    tls_client_auth_san_email: 'email:',
  }[property];
  if (!prefix || !cert.subjectAltName) return false;
  return splitSans(cert.subjectAltName)
    .filter((entry) => entry.startsWith(prefix))
    .map((entry) => entry.slice(prefix.length))
    .some((value) => value === expected);
}
// "DNS:a, URI:b, IP Address:127.0.0.1": Node quotes (JSON) the entries that hold a comma.
function splitSans(text) {
  const entries = [];
  let rest = text;
  while (rest.length) {
    const colon = rest.indexOf(':');
    const type = rest.slice(0, colon + 1);
    rest = rest.slice(colon + 1);
    let value;
    if (rest.startsWith('"')) {
      let end = 1;
      while (end < rest.length && !(rest[end] === '"' && rest[end - 1] !== '\\')) end += 1;
      value = JSON.parse(rest.slice(0, end + 1));
      rest = rest.slice(end + 1);
    } else {
      const comma = rest.indexOf(', ');
      value = comma === -1 ? rest : rest.slice(0, comma);
      rest = comma === -1 ? '' : rest.slice(comma);
    }
    entries.push(type + value);
    rest = rest.replace(/^, /, '');
  }
  return entries;
}

// --- the provider ---------------------------------------------------------------------------

const hostInUrl = host.includes(':') ? `[${host}]` : host;
const scheme = tls ? 'https' : 'http';

function buildProvider(boundPort) {
  const issuer = `${scheme}://${hostInUrl}:${boundPort}${mountPath}`;
  const features = {
    clientCredentials: { enabled: true },
    devInteractions: { enabled: false },
    // A development IdP: every authenticated client may introspect any token.
    introspection: { enabled: true, allowedPolicy: async () => true },
  };
  const configuration = {
    clients,
    scopes: ['openid', 'profile', 'email', 'read', 'write', 'admin'],
    features,
    routes: { token: tokenRoute, introspection: introspectionRoute },
    ttl: { ClientCredentials: ttl },
  };
  if (mtls) {
    features.mTLS = {
      enabled: true,
      tlsClientAuth: true,
      getCertificate: peerCertificatePem,
      certificateAuthorized: (ctx) => ctx.req.socket.authorized === true,
      certificateSubjectMatches: (ctx, property, expected) => {
        const pem = peerCertificatePem(ctx);
        return Boolean(pem) && subjectMatches(pem, property, expected);
      },
    };
    configuration.clientAuthMethods = [
      'client_secret_basic', 'client_secret_post', 'client_secret_jwt', 'private_key_jwt',
      'tls_client_auth', 'none',
    ];
  }
  if (resources.size || anyResource) {
    features.resourceIndicators = {
      enabled: true,
      defaultResource: async (ctx, client, oneOf) => oneOf,
      useGrantedResource: async () => false,
      getResourceServerInfo: async (ctx, resourceIndicator) => {
        if (!anyResource && !resources.has(resourceIndicator)) {
          throw new errors.InvalidTarget();
        }
        return {
          scope: resourceScope,
          audience: resourceIndicator,
          accessTokenTTL: ttl,
          accessTokenFormat: 'jwt',
          jwt: { sign: { alg: 'RS256' } },
        };
      },
    };
  }
  if (assertionMaxAge !== undefined) {
    configuration.assertJwtClientAuthClaimsAndHeader = async (ctx, claims) => {
      if (claims.exp > Math.floor(Date.now() / 1000) + assertionMaxAge) {
        throw new errors.InvalidClientAuth(
          `client assertion exp must be at most ${assertionMaxAge} s ahead`,
        );
      }
    };
  }
  const provider = new Provider(issuer, configuration);
  provider.proxy = false;
  return { provider, issuer };
}

// --- what tests can count and inspect -------------------------------------------------------

const stats = {
  token_calls: 0,
  token_calls_by_auth_method: {},
  client_cert_token_calls: 0,
  token_requests: [],
};
const keptRequests = 100;

function decodeAssertion(assertion) {
  try {
    const [header, claims] = assertion.split('.').slice(0, 2)
      .map((part) => JSON.parse(Buffer.from(part, 'base64url').toString('utf8')));
    return { header, claims };
  } catch {
    return { undecodable: true };
  }
}

function describeTokenRequest(ctx) {
  const body = ctx.oidc?.body ?? {};
  const socket = ctx.req.socket;
  const peer = socket?.encrypted ? socket.getPeerCertificate(false) : undefined;
  const clientCert = Boolean(peer && Object.keys(peer).length);
  let presented = 'none';
  if (ctx.headers.authorization !== undefined) presented = 'client_secret_basic';
  else if (body.client_secret !== undefined) presented = 'client_secret_post';
  else if (body.client_assertion !== undefined) presented = 'client_assertion';
  let responseBody = ctx.body;
  if (typeof responseBody === 'string') {
    try { responseBody = JSON.parse(responseBody); } catch { responseBody = undefined; }
  }
  const ok = ctx.status === 200;
  const client = ctx.oidc?.entities?.Client;
  let resource = body.resource;
  if (resource !== undefined && !Array.isArray(resource)) resource = [resource];
  return {
    status: ctx.status,
    error: ok ? null : (responseBody?.error ?? null),
    error_description: ok ? null : (responseBody?.error_description ?? null),
    // oidc-provider answers every client authentication failure with the same description;
    // the reason it found (e.g. "client assertion tokens must only be used once") is here.
    error_detail: ok ? null : (ctx.state.idpErrorDetail ?? null),
    client_id: client?.clientId ?? body.client_id ?? null,
    auth_method: ok && client ? client.clientAuthMethod : null,
    presented,
    assertion: typeof body.client_assertion === 'string' ? decodeAssertion(body.client_assertion) : null,
    tls: Boolean(socket?.encrypted),
    client_cert: clientCert,
    client_cert_subject: clientCert ? new X509Certificate(peer.raw).subject.split('\n').reverse().join(',') : null,
    client_cert_authorized: clientCert ? socket.authorized === true : null,
    resource: resource ?? null,
    audience: body.audience ?? null,
    scope: body.scope ?? null,
    grant_type: body.grant_type ?? null,
    host: ctx.headers.host ?? null,
  };
}

function recordTokenRequest(ctx) {
  let record;
  try {
    record = describeTokenRequest(ctx);
  } catch (error) {
    record = { status: ctx.status, describe_error: String(error) };
  }
  if (record.auth_method) {
    stats.token_calls_by_auth_method[record.auth_method] = (stats.token_calls_by_auth_method[record.auth_method] ?? 0) + 1;
  }
  if (record.client_cert) stats.client_cert_token_calls += 1;
  stats.token_requests.push(record);
  if (stats.token_requests.length > keptRequests) stats.token_requests.shift();
}

function statsBody() {
  return JSON.stringify({ ...stats, last_token_request: stats.token_requests.at(-1) ?? null });
}

function resetStats() {
  stats.token_calls = 0;
  stats.token_calls_by_auth_method = {};
  stats.client_cert_token_calls = 0;
  stats.token_requests = [];
}

// --- the server -----------------------------------------------------------------------------

let callback;
const handler = (req, res) => {
  if (req.url === '/_test/stats') {
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(statsBody());
  } else if (req.url === '/_test/reset' && req.method === 'POST') {
    resetStats();
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(statsBody());
  } else if (callback && (req.url === mountPath || req.url.startsWith(`${mountPath}/`))) {
    req.originalUrl = req.url;
    req.url = req.url.slice(mountPath.length) || '/';
    callback(req, res);
  } else {
    res.writeHead(404, { 'content-type': 'application/json' });
    res.end('{"error":"not_found"}');
  }
};
const server = tls
  ? https.createServer({
    cert: fs.readFileSync(tlsCertFile),
    key: fs.readFileSync(tlsKeyFile),
    ...(mtls ? { ca: fs.readFileSync(clientCaFile), requestCert: true, rejectUnauthorized: false } : {}),
  }, handler)
  : http.createServer(handler);
server.keepAliveTimeout = 60_000;
server.listen(port, host, () => {
  const { port: bound } = server.address();
  // With IDP_PORT=0 the issuer needs the port the system picked, so the provider is built
  // once the server listens (nothing reaches the provider before that).
  const { provider, issuer } = buildProvider(bound);
  provider.use(async (ctx, next) => {
    if (ctx.path === tokenRoute && ctx.method === 'POST') {
      stats.token_calls += 1;
      if (delayMs > 0) await new Promise((resolve) => setTimeout(resolve, delayMs));
      try {
        await next();
      } finally {
        recordTokenRequest(ctx);
      }
      return;
    }
    await next();
  });
  const keepDetail = (ctx, error) => {
    ctx.state.idpErrorDetail = error.error_detail ?? error.error_description ?? error.message;
  };
  provider.on('grant.error', keepDetail);
  provider.on('server_error', keepDetail);
  callback = provider.callback();
  console.log(JSON.stringify({
    listening: `${scheme}://${hostInUrl}:${bound}`, token_path: tokenPath, issuer,
  }));
});
const stop = () => server.close(() => process.exit(0));
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
