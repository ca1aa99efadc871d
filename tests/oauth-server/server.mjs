// A real OAuth 2.0 authorization server for the vault integration tests.
//
// oidc-provider with one confidential client (client_secret_post), authorization code + PKCE S256,
// refresh tokens with rotation (reuse of a rotated refresh token revokes the whole grant),
// RFC 7009 revocation and RFC 7662 introspection, and a short access-token lifetime.
//
// Logging in is non-interactive: the interaction handler signs in as the account named by the
// `login_hint` authorization parameter (the test acts as the user's browser) and the grant is
// approved automatically for every requested scope except those listed (space separated) in the
// `deny_scope` parameter, so tests can see a grant narrower than the request.
//
// Listens on 127.0.0.1, port 0, and prints one line `{"port": N}` on stdout once it is ready.
//
// An authorization request and token request naming a `resource` (RFC 8707), such as an MCP
// endpoint, get a JWT access token for it: `aud` is the resource, `sub` the account, signed
// RS256 with the server's key published at /jwks (the MCP JWKS verifier's tests). Without
// `resource`, access tokens stay opaque.
//
// Environment: OAUTH_CLIENT_ID, OAUTH_CLIENT_SECRET, OAUTH_REDIRECT_URI, OAUTH_ACCESS_TOKEN_TTL (s).

import http from 'node:http';
import Provider from 'oidc-provider';

const clientId = process.env.OAUTH_CLIENT_ID ?? 'chain-test-client';
const clientSecret = process.env.OAUTH_CLIENT_SECRET;
const redirectUri = process.env.OAUTH_REDIRECT_URI ?? 'https://app.example.test/oauth/callback';
const accessTokenTtl = Number(process.env.OAUTH_ACCESS_TOKEN_TTL ?? '120');

if (!clientSecret) {
  console.error('OAUTH_CLIENT_SECRET must be set');
  process.exit(2);
}

const server = http.createServer();
await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
const { port } = server.address();
const issuer = `http://127.0.0.1:${port}`;

const provider = new Provider(issuer, {
  clients: [
    {
      client_id: clientId,
      client_secret: clientSecret,
      redirect_uris: [redirectUri],
      grant_types: ['authorization_code', 'refresh_token'],
      response_types: ['code'],
      token_endpoint_auth_method: 'client_secret_post',
    },
  ],
  // Every account exists; its subject is its id.
  async findAccount(_ctx, id) {
    return { accountId: id, async claims() { return { sub: id }; } };
  },
  scopes: ['openid', 'offline_access', 'api', 'read', 'write', 'admin'],
  extraParams: ['deny_scope'],
  features: {
    devInteractions: { enabled: false },
    introspection: { enabled: true },
    revocation: { enabled: true },
    resourceIndicators: {
      enabled: true,
      async getResourceServerInfo(_ctx, resourceIndicator) {
        return {
          scope: 'api read write admin',
          audience: resourceIndicator,
          accessTokenTTL: accessTokenTtl,
          accessTokenFormat: 'jwt',
          jwt: { sign: { alg: 'RS256' } },
        };
      },
    },
  },
  pkce: { required: () => true },
  // Always rotate: a used refresh token is consumed, presenting it again revokes the grant.
  rotateRefreshToken: true,
  // A refresh token for every code exchange, without requiring offline_access.
  async issueRefreshToken(_ctx, client) {
    return client.grantTypeAllowed('refresh_token');
  },
  // Auto-approve: a grant with the requested scopes minus `deny_scope`.
  async loadExistingGrant(ctx) {
    const accountId = ctx.oidc.session?.accountId;
    if (!accountId) return undefined;
    const denied = new Set((ctx.oidc.params.deny_scope ?? '').split(' ').filter(Boolean));
    const requested = (ctx.oidc.params.scope ?? '').split(' ').filter((s) => s && !denied.has(s));
    const grant = new ctx.oidc.provider.Grant({ clientId: ctx.oidc.client.clientId, accountId });
    grant.addOIDCScope(requested.join(' '));
    const resources = [ctx.oidc.params.resource ?? []].flat();
    for (const resource of resources) {
      grant.addResourceScope(resource, requested.join(' '));
    }
    if (denied.size > 0) grant.rejectOIDCScope([...denied].join(' '));
    await grant.save();
    return grant;
  },
  ttl: {
    AccessToken: accessTokenTtl,
    AuthorizationCode: 120,
    RefreshToken: 24 * 60 * 60,
    Grant: 24 * 60 * 60,
    Interaction: 10 * 60,
    Session: 60 * 60,
    IdToken: 60 * 60,
  },
  cookies: { keys: ['chain-vault-tests-only'] },
});

// Non-interactive login: the account is the `login_hint` of the authorization request.
provider.use(async (ctx, next) => {
  const match = ctx.method === 'GET' && ctx.path.match(/^\/interaction\/([^/]+)$/);
  if (!match) {
    await next();
    return;
  }
  const details = await provider.interactionDetails(ctx.req, ctx.res);
  const accountId = details.params.login_hint;
  if (!accountId) {
    ctx.status = 400;
    ctx.body = 'add login_hint=<account> to the authorization URL to sign in';
    return;
  }
  let result;
  if (details.prompt.name === 'login') {
    result = { login: { accountId } };
  } else {
    result = { consent: {} };
  }
  await provider.interactionFinished(ctx.req, ctx.res, result, { mergeWithLastSubmission: true });
  ctx.respond = false;
});

server.on('request', provider.callback());

process.on('SIGTERM', () => process.exit(0));
process.stdout.write(`${JSON.stringify({ port })}\n`);
