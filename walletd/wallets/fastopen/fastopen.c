/*
 * libwalletd_fastopen.so: an LD_PRELOAD library for walletd's own monero-wallet-rpc children.
 *
 * wallet-rpc makes an RSA-4096 key at every open_wallet/create_wallet for the TLS context of the
 * multisig messaging transporter (SSL autodetect), a context walletd never uses: 1-2 s of CPU.
 * This library answers RSA_generate_key_ex with a copy of one RSA key read from the PEM file named
 * by WALLETD_FASTOPEN_KEY (made once by walletd, 0600), and only when the request matches that key
 * exactly: same bit size, same public exponent. Anything else (no variable, no readable key, other
 * size or exponent, any failure) goes to the real RSA_generate_key_ex of libcrypto. Monero wallet
 * keys are ed25519 keys of Monero's own code and never come from here. Nothing is ever printed.
 *
 * Only RSA_generate_key_ex is exported (-fvisibility=hidden); see scripts/setup.sh for the build.
 */
#define _GNU_SOURCE
#define OPENSSL_SUPPRESS_DEPRECATED /* the RSA_* API is what the caller uses, so it is ours too */

#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

#include <openssl/bn.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>

#define EXPORT __attribute__((visibility("default")))

typedef int (*generate_fn)(RSA *, int, BIGNUM *, BN_GENCB *);

static pthread_once_t once = PTHREAD_ONCE_INIT;
static RSA *key;            /* the pre-made key, or NULL: then every call falls through */
static generate_fn real_fn; /* the next RSA_generate_key_ex, libcrypto's */

static void load(void)
{
    real_fn = (generate_fn)dlsym(RTLD_NEXT, "RSA_generate_key_ex");
    const char *path = getenv("WALLETD_FASTOPEN_KEY");
    if (path == NULL || path[0] == '\0')
        return;
    FILE *file = fopen(path, "re");
    if (file == NULL)
        return;
    RSA *loaded = PEM_read_RSAPrivateKey(file, NULL, NULL, NULL);
    fclose(file);
    if (loaded == NULL)
        return;
    const BIGNUM *n, *e, *d, *p, *q, *dmp1, *dmq1, *iqmp;
    RSA_get0_key(loaded, &n, &e, &d);
    RSA_get0_factors(loaded, &p, &q);
    RSA_get0_crt_params(loaded, &dmp1, &dmq1, &iqmp);
    if (!n || !e || !d || !p || !q || !dmp1 || !dmq1 || !iqmp) {
        RSA_free(loaded);
        return;
    }
    key = loaded;
}

/* Copy the pre-made key into `rsa`; 0 (nothing changed that the real call does not overwrite). */
static int copy_key(RSA *rsa)
{
    const BIGNUM *n, *e, *d, *p, *q, *dmp1, *dmq1, *iqmp;
    RSA_get0_key(key, &n, &e, &d);
    RSA_get0_factors(key, &p, &q);
    RSA_get0_crt_params(key, &dmp1, &dmq1, &iqmp);
    BIGNUM *c[8] = {BN_dup(n), BN_dup(e),    BN_dup(d),    BN_dup(p),
                    BN_dup(q), BN_dup(dmp1), BN_dup(dmq1), BN_dup(iqmp)};
    int i;
    for (i = 0; i < 8; i++)
        if (c[i] == NULL)
            goto fail;
    if (!RSA_set0_key(rsa, c[0], c[1], c[2]))
        goto fail;
    c[0] = c[1] = c[2] = NULL; /* owned by rsa now */
    if (!RSA_set0_factors(rsa, c[3], c[4]))
        goto fail;
    c[3] = c[4] = NULL;
    if (!RSA_set0_crt_params(rsa, c[5], c[6], c[7]))
        goto fail;
    return 1;
fail:
    for (i = 0; i < 8; i++)
        BN_clear_free(c[i]);
    return 0;
}

EXPORT int RSA_generate_key_ex(RSA *rsa, int bits, BIGNUM *e_value, BN_GENCB *cb)
{
    if (pthread_once(&once, load) != 0 || real_fn == NULL)
        return 0; /* cannot even find libcrypto's: fail like a failed generation */
    if (key != NULL && rsa != NULL && e_value != NULL && bits == RSA_bits(key)) {
        const BIGNUM *e;
        RSA_get0_key(key, NULL, &e, NULL);
        if (BN_cmp(e, e_value) == 0 && copy_key(rsa))
            return 1;
    }
    return real_fn(rsa, bits, e_value, cb);
}
