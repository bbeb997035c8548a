// tss2 (tpm2-tss 3.x, Debian's libtss2-dev) for OutpostTrust: ESYS to speak
// with the TPM, the TCTI loader to reach /dev/tpmrm0 or swtpm, MU to store key
// blobs, RC to name failures. The helpers exist because TPMT_PUBLIC is a nest
// of unions and fixed arrays that reads like the spec's tables only in C.
#include <tss2/tss2_esys.h>
#include <tss2/tss2_tctildr.h>
#include <tss2/tss2_mu.h>
#include <tss2/tss2_rc.h>
#include <string.h>

// The storage root key: the TCG's standard ECC P-256 SRK template (restricted
// decrypt, AES-128-CFB), so any tool that knows the template finds the same key.
static inline void CTSS2_srk_template(TPM2B_PUBLIC *out) {
    memset(out, 0, sizeof *out);
    TPMT_PUBLIC *p = &out->publicArea;
    p->type = TPM2_ALG_ECC;
    p->nameAlg = TPM2_ALG_SHA256;
    p->objectAttributes = TPMA_OBJECT_RESTRICTED | TPMA_OBJECT_DECRYPT | TPMA_OBJECT_FIXEDTPM
        | TPMA_OBJECT_FIXEDPARENT | TPMA_OBJECT_SENSITIVEDATAORIGIN | TPMA_OBJECT_USERWITHAUTH
        | TPMA_OBJECT_NODA;
    p->parameters.eccDetail.symmetric.algorithm = TPM2_ALG_AES;
    p->parameters.eccDetail.symmetric.keyBits.aes = 128;
    p->parameters.eccDetail.symmetric.mode.aes = TPM2_ALG_CFB;
    p->parameters.eccDetail.scheme.scheme = TPM2_ALG_NULL;
    p->parameters.eccDetail.curveID = TPM2_ECC_NIST_P256;
    p->parameters.eccDetail.kdf.scheme = TPM2_ALG_NULL;
    p->unique.ecc.x.size = 32;
    p->unique.ecc.y.size = 32;
}

// The device key: an unrestricted P-256 ECDSA-SHA256 signing key that never
// leaves this TPM (fixedTPM, fixedParent) and was generated inside it.
static inline void CTSS2_signing_key_template(TPM2B_PUBLIC *out) {
    memset(out, 0, sizeof *out);
    TPMT_PUBLIC *p = &out->publicArea;
    p->type = TPM2_ALG_ECC;
    p->nameAlg = TPM2_ALG_SHA256;
    p->objectAttributes = TPMA_OBJECT_SIGN_ENCRYPT | TPMA_OBJECT_FIXEDTPM | TPMA_OBJECT_FIXEDPARENT
        | TPMA_OBJECT_SENSITIVEDATAORIGIN | TPMA_OBJECT_USERWITHAUTH;
    p->parameters.eccDetail.symmetric.algorithm = TPM2_ALG_NULL;
    p->parameters.eccDetail.scheme.scheme = TPM2_ALG_ECDSA;
    p->parameters.eccDetail.scheme.details.ecdsa.hashAlg = TPM2_ALG_SHA256;
    p->parameters.eccDetail.curveID = TPM2_ECC_NIST_P256;
    p->parameters.eccDetail.kdf.scheme = TPM2_ALG_NULL;
}

// Whether `pub` is a P-256 key with the attributes of the storage root key
// template: a persistent handle could hold anything another tool put there.
static inline int CTSS2_is_srk(const TPM2B_PUBLIC *pub) {
    const TPMT_PUBLIC *p = &pub->publicArea;
    TPMA_OBJECT need = TPMA_OBJECT_RESTRICTED | TPMA_OBJECT_DECRYPT | TPMA_OBJECT_FIXEDTPM | TPMA_OBJECT_FIXEDPARENT;
    return p->type == TPM2_ALG_ECC && p->parameters.eccDetail.curveID == TPM2_ECC_NIST_P256
        && (p->objectAttributes & need) == need && (p->objectAttributes & TPMA_OBJECT_SIGN_ENCRYPT) == 0;
}

// The public point of a P-256 key; 1 when both coordinates are 32 bytes.
static inline int CTSS2_ecc_point(const TPM2B_PUBLIC *pub, uint8_t *x, uint8_t *y) {
    const TPMS_ECC_POINT *q = &pub->publicArea.unique.ecc;
    if (pub->publicArea.type != TPM2_ALG_ECC || q->x.size != 32 || q->y.size != 32) return 0;
    memcpy(x, q->x.buffer, 32);
    memcpy(y, q->y.buffer, 32);
    return 1;
}

// TPM2_Sign of a SHA-256 digest with `key` (password session, empty auth),
// the signature's r and s copied out left-padded to 32 bytes each.
static inline TSS2_RC CTSS2_sign_digest(ESYS_CONTEXT *ctx, ESYS_TR key, const uint8_t *digest,
                                        uint8_t *r, uint8_t *s) {
    TPM2B_DIGEST in = { .size = 32 };
    memcpy(in.buffer, digest, 32);
    TPMT_SIG_SCHEME scheme = { .scheme = TPM2_ALG_ECDSA, .details.ecdsa.hashAlg = TPM2_ALG_SHA256 };
    TPMT_TK_HASHCHECK ticket = { .tag = TPM2_ST_HASHCHECK, .hierarchy = TPM2_RH_NULL, .digest.size = 0 };
    TPMT_SIGNATURE *sig = NULL;
    TSS2_RC rc = Esys_Sign(ctx, key, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE, &in, &scheme, &ticket, &sig);
    if (rc != TSS2_RC_SUCCESS) return rc;
    const TPM2B_ECC_PARAMETER *pr = &sig->signature.ecdsa.signatureR, *ps = &sig->signature.ecdsa.signatureS;
    if (sig->sigAlg != TPM2_ALG_ECDSA || pr->size > 32 || ps->size > 32) { Esys_Free(sig); return TSS2_ESYS_RC_MALFORMED_RESPONSE; }
    memset(r, 0, 32); memset(s, 0, 32);
    memcpy(r + 32 - pr->size, pr->buffer, pr->size);
    memcpy(s + 32 - ps->size, ps->buffer, ps->size);
    Esys_Free(sig);
    return TSS2_RC_SUCCESS;
}

// Esys_CreatePrimary/Esys_Create with empty auth, no outside info and no
// creation PCRs: the arguments Swift would otherwise build field by field.
static inline TSS2_RC CTSS2_create_primary(ESYS_CONTEXT *ctx, const TPM2B_PUBLIC *template, ESYS_TR *out) {
    TPM2B_SENSITIVE_CREATE sensitive = { 0 };
    TPM2B_DATA outside = { 0 };
    TPML_PCR_SELECTION pcrs = { 0 };
    return Esys_CreatePrimary(ctx, ESYS_TR_RH_OWNER, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE,
                              &sensitive, template, &outside, &pcrs, out, NULL, NULL, NULL, NULL);
}

static inline TSS2_RC CTSS2_create(ESYS_CONTEXT *ctx, ESYS_TR parent, const TPM2B_PUBLIC *template,
                                   TPM2B_PRIVATE **outPrivate, TPM2B_PUBLIC **outPublic) {
    TPM2B_SENSITIVE_CREATE sensitive = { 0 };
    TPM2B_DATA outside = { 0 };
    TPML_PCR_SELECTION pcrs = { 0 };
    return Esys_Create(ctx, parent, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE,
                       &sensitive, template, &outside, &pcrs, outPrivate, outPublic, NULL, NULL, NULL);
}

// Esys_Free is a function, but the ESYS outputs are typed; one per type keeps Swift simple.
static inline void CTSS2_free_public(TPM2B_PUBLIC *p) { Esys_Free(p); }
static inline void CTSS2_free_private(TPM2B_PRIVATE *p) { Esys_Free(p); }

// Format-1 TPM_RC_INTEGRITY (any parameter): a blob not made by this TPM's
// parent key.
static inline int CTSS2_is_integrity_failure(TSS2_RC rc) {
    return (rc & 0xFFFF0000u) == 0 && (rc & 0x80u) != 0 && (rc & 0x3Fu) == 0x1Fu;
}
// TPM_RC_HANDLE from TR_FromTPMPublic: nothing at that persistent handle.
static inline int CTSS2_is_handle_missing(TSS2_RC rc) {
    return (rc & 0xFFFF0000u) == 0 && (rc & 0x80u) != 0 && (rc & 0x3Fu) == 0x0Bu;
}
