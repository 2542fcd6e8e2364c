// The OpenID provider the test suite signs in through: node's oidc-provider (a certified OpenID
// Connect implementation) with its development login form, configured from a JSON file:
//
//   node provider.mjs config.json
//
// config.json: {"issuer": "http://127.0.0.1:PORT", "port": PORT, "keys": [<private JWK>],
//   "clients": [<client metadata>], "accounts": {"<sub>": {<claims>}}, "rpInitiatedLogout": true}
// (accounts are read again at every sign-in). The development login form takes the subject.
//
// The issuer may be another address than the port it listens on (a proxy in front of it). It
// prints "listening on PORT" once it accepts connections.
import { readFileSync } from 'node:fs';

import Provider from 'oidc-provider';

const configPath = process.argv[2];
const config = JSON.parse(readFileSync(configPath, 'utf8'));

// Read again at every look-up: a test changes an account's groups between two sign-ins.
function accounts() {
  return JSON.parse(readFileSync(configPath, 'utf8')).accounts;
}

// Which scope releases which claims. `groups` and `posix` are this site's own scopes.
const claims = {
  openid: ['sub'],
  email: ['email', 'email_verified'],
  profile: ['preferred_username', 'name', 'given_name', 'family_name'],
  groups: ['groups'],
  posix: ['posix_username'],
};

const provider = new Provider(config.issuer, {
  clients: config.clients,
  jwks: { keys: config.keys },
  claims,
  scopes: Object.keys(claims).concat(['offline_access']),
  pkce: { required: () => true },
  features: {
    devInteractions: { enabled: true },
    rpInitiatedLogout: { enabled: config.rpInitiatedLogout !== false },
  },
  // Only the accounts in the configuration exist.
  async findAccount(ctx, sub) {
    const account = accounts()[sub];
    if (!account) return undefined;
    return {
      accountId: sub,
      async claims() {
        return { ...account, sub };
      },
    };
  },
  // The portal is the site's own application: its users are not asked to consent.
  async loadExistingGrant(ctx) {
    const grantId = ctx.oidc.result?.consent?.grantId || ctx.oidc.session.grantIdFor(ctx.oidc.client.clientId);
    if (grantId) return ctx.oidc.provider.Grant.find(grantId);
    const grant = new ctx.oidc.provider.Grant({
      clientId: ctx.oidc.client.clientId,
      accountId: ctx.oidc.session.accountId,
    });
    grant.addOIDCScope(Object.keys(claims).join(' '));
    await grant.save();
    return grant;
  },
  cookies: { keys: ['test-only-cookie-key'] },
});

// An account that the development form names but the configuration does not is an error page,
// not a crash.
provider.on('server_error', (ctx, error) => console.error('server_error', error));

const server = provider.listen(config.port, '127.0.0.1', () => {
  console.log(`listening on ${config.port}`);
});

for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => server.close(() => process.exit(0)));
}
