// Test-only OpenID Provider for the Palisade test-suite (started by tests/support/idp.py).
//
// Usage: node server.mjs <config.json>
//   config: { port, issuer, audience, jwks: { keys: [private JWKs] }, access_token_ttl,
//             tls?: { cert, key } (PEM file paths: serve https, for an https issuer) }
//
// Client-credentials grants return RFC 9068 JWT access tokens (typ "at+jwt") for the
// configured audience. oidc-provider sets `sub` of a client-credentials JWT to the
// client_id (lib/models/formats/jwt.js: `sub: accountId || clientId`), so each test
// subject is registered as a client whose client_id IS the subject; its extra claims
// live in the `test_token_claims` client metadata and are added via `extraTokenClaims`.
//
// Test-only routes (never part of a real IdP; bound to 127.0.0.1 only):
//   POST /__test/clients     {client_id, client_secret, claims?, scope?} -> 204
//   POST /__test/keys        {keys: [private JWKs]} -> 204 (swaps the signing keys)
//   GET  /__test/jwks-hits   -> {"hits": n}  (requests served on the jwks_uri)
import * as http from 'node:http';
import * as https from 'node:https';
import { readFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';

import Provider, { errors } from 'oidc-provider';

const JWKS_PATH = '/jwks';

// Claims the provider itself sets on every access token; a test that wants other
// values for them needs a forged token (TestIdP.forge), not a registered client.
const RESERVED_CLAIMS = new Set([
  'iss', 'sub', 'aud', 'exp', 'iat', 'jti', 'client_id', 'scope', 'cnf', 'authorization_details',
]);

const configPath = process.argv[2];
if (!configPath) {
  console.error('usage: node server.mjs <config.json>');
  process.exit(2);
}
const config = JSON.parse(readFileSync(configPath, 'utf8'));
const { port, issuer, audience } = config;
const ttl = config.access_token_ttl ?? 300;

// oidc-provider requires resource indicators to be absolute URIs, while the audience
// the application expects (e.g. "palisade-api") need not be one.
const RESOURCE = URL.canParse(audience)
  ? audience
  : `urn:palisade-test-idp:audience:${encodeURIComponent(audience)}`;

const isPlainObject = (v) => v !== null && typeof v === 'object' && !Array.isArray(v);

// Unbounded in-memory store shared by every Provider instance in this process, so
// registered clients survive a key swap; the bundled memory adapter is an LRU that
// would silently evict clients in a long test session.
const storage = new Map();

class MapAdapter {
  constructor(model) {
    if (!storage.has(model)) storage.set(model, new Map());
    this.store = storage.get(model);
  }

  async upsert(id, payload, expiresIn) {
    const expiresAt = expiresIn ? Date.now() + expiresIn * 1000 : undefined;
    this.store.set(id, { payload, expiresAt });
  }

  async find(id) {
    const entry = this.store.get(id);
    if (!entry) return undefined;
    if (entry.expiresAt !== undefined && entry.expiresAt <= Date.now()) {
      this.store.delete(id);
      return undefined;
    }
    return entry.payload;
  }

  async findByUid(uid) {
    for (const [id, { payload }] of this.store) {
      if (payload.uid === uid) return this.find(id);
    }
    return undefined;
  }

  async findByUserCode(userCode) {
    for (const [id, { payload }] of this.store) {
      if (payload.userCode === userCode) return this.find(id);
    }
    return undefined;
  }

  async consume(id) {
    const entry = this.store.get(id);
    if (entry) entry.payload.consumed = Math.floor(Date.now() / 1000);
  }

  async destroy(id) {
    this.store.delete(id);
  }

  async revokeByGrantId(grantId) {
    for (const [id, { payload }] of this.store) {
      if (payload.grantId === grantId) this.store.delete(id);
    }
  }
}

// Cookies are unused (no interactive flows) but a fixed key silences the dev warning.
const cookieKeys = [randomBytes(32).toString('base64url')];

function buildProvider(jwks) {
  const provider = new Provider(issuer, {
    adapter: MapAdapter,
    jwks,
    cookies: { keys: cookieKeys },
    clients: [],
    features: {
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      resourceIndicators: {
        enabled: true,
        defaultResource: async () => RESOURCE,
        useGrantedResource: async () => true,
        getResourceServerInfo: async (ctx, resourceIndicator, client) => {
          if (resourceIndicator !== RESOURCE) throw new errors.InvalidTarget();
          return {
            audience,
            // A client may be granted exactly the scopes it was registered with; these are
            // custom metadata because the standard `scope` metadata must only hold scopes
            // from the provider's static `scopes` list.
            scope: client?.test_scope ?? '',
            accessTokenTTL: ttl,
            accessTokenFormat: 'jwt',
            jwt: { sign: { alg: 'RS256' } },
          };
        },
      },
    },
    extraClientMetadata: {
      properties: ['test_token_claims', 'test_scope'],
      validator(ctx, key, value) {
        if (value === undefined) return;
        if (key === 'test_scope') {
          if (typeof value !== 'string') throw new errors.InvalidClientMetadata('test_scope must be a string');
          return;
        }
        if (!isPlainObject(value)) {
          throw new errors.InvalidClientMetadata('test_token_claims must be a JSON object');
        }
        const reserved = Object.keys(value).filter((claim) => RESERVED_CLAIMS.has(claim));
        if (reserved.length) {
          throw new errors.InvalidClientMetadata(
            `test_token_claims may not set provider-controlled claims: ${reserved.join(', ')}`,
          );
        }
      },
    },
    extraTokenClaims: async (ctx, token) => token.client?.test_token_claims,
    ttl: { ClientCredentials: ttl },
  });
  return { provider, handle: provider.callback() };
}

let current = buildProvider(config.jwks);
let jwksHits = 0;

async function readJson(req) {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  return JSON.parse(Buffer.concat(chunks).toString('utf8') || '{}');
}

function send(res, status, body) {
  if (body === undefined) {
    res.writeHead(status).end();
    return;
  }
  res.writeHead(status, { 'content-type': 'application/json' }).end(JSON.stringify(body));
}

async function registerClient(body) {
  const { client_id: clientId, client_secret: clientSecret, claims, scope } = body;
  if (typeof clientId !== 'string' || !clientId || typeof clientSecret !== 'string' || !clientSecret) {
    throw new errors.InvalidClientMetadata('client_id and client_secret must be non-empty strings');
  }
  const metadata = {
    client_id: clientId,
    client_secret: clientSecret,
    grant_types: ['client_credentials'],
    response_types: [],
    redirect_uris: [],
    // Secrets in the form body avoid client_secret_basic's form-encoding pitfalls for
    // subjects containing ':' or non-ASCII characters.
    token_endpoint_auth_method: 'client_secret_post',
    ...(scope ? { test_scope: scope } : undefined),
    ...(claims && Object.keys(claims).length ? { test_token_claims: claims } : undefined),
  };
  // Validate now so a bad registration fails here, not later as an opaque invalid_client.
  await current.provider.Client.validate(metadata);
  await current.provider.Client.adapter.upsert(clientId, metadata);
}

async function handleTestRoute(req, res, pathname) {
  try {
    if (req.method === 'GET' && pathname === '/__test/jwks-hits') {
      send(res, 200, { hits: jwksHits });
    } else if (req.method === 'POST' && pathname === '/__test/clients') {
      await registerClient(await readJson(req));
      send(res, 204);
    } else if (req.method === 'POST' && pathname === '/__test/keys') {
      // Building first means a rejected key set leaves the running provider untouched.
      current = buildProvider(await readJson(req));
      send(res, 204);
    } else {
      send(res, 404, { error: 'not_found' });
    }
  } catch (err) {
    send(res, 400, { error: err.error ?? 'invalid_request', error_description: err.error_description ?? err.message });
  }
}

const handler = (req, res) => {
  const { pathname } = new URL(req.url, issuer);
  if (pathname.startsWith('/__test/')) {
    handleTestRoute(req, res, pathname);
    return;
  }
  if (pathname === JWKS_PATH) jwksHits += 1;
  current.handle(req, res);
};
const server = config.tls
  ? https.createServer({ cert: readFileSync(config.tls.cert), key: readFileSync(config.tls.key) }, handler)
  : http.createServer(handler);

server.on('error', (err) => {
  console.error(`test-idp: ${err.code ?? ''} ${err.message}`);
  process.exit(1);
});

server.listen(port, '127.0.0.1', () => {
  console.log(`test-idp ready ${issuer}`);
});

function shutdown() {
  server.close(() => process.exit(0));
  // Keep-alive connections from HTTP clients would otherwise hold close() open.
  server.closeAllConnections();
}
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);
