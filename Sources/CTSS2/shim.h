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

// ---- Attestation (OutpostTrust's TPMAttestor) ----

// The endorsement key: the TCG EK Credential Profile's ECC P-256 template
// (L-2). Its policy is PolicySecret(TPM_RH_ENDORSEMENT); the template is
// deterministic, so CreatePrimary gives the same key (the one an EK
// certificate names) every time without keeping it at a persistent handle.
static inline void CTSS2_ek_template(TPM2B_PUBLIC *out) {
    static const uint8_t policy[32] = {
        0x83, 0x71, 0x97, 0x67, 0x44, 0x84, 0xB3, 0xF8, 0x1A, 0x90, 0xCC, 0x8D, 0x46, 0xA5, 0xD7, 0x24,
        0xFD, 0x52, 0xD7, 0x6E, 0x06, 0x52, 0x0B, 0x64, 0xF2, 0xA1, 0xDA, 0x1B, 0x33, 0x14, 0x69, 0xAA };
    memset(out, 0, sizeof *out);
    TPMT_PUBLIC *p = &out->publicArea;
    p->type = TPM2_ALG_ECC;
    p->nameAlg = TPM2_ALG_SHA256;
    p->objectAttributes = TPMA_OBJECT_FIXEDTPM | TPMA_OBJECT_FIXEDPARENT | TPMA_OBJECT_SENSITIVEDATAORIGIN
        | TPMA_OBJECT_ADMINWITHPOLICY | TPMA_OBJECT_RESTRICTED | TPMA_OBJECT_DECRYPT;
    p->authPolicy.size = 32;
    memcpy(p->authPolicy.buffer, policy, 32);
    p->parameters.eccDetail.symmetric.algorithm = TPM2_ALG_AES;
    p->parameters.eccDetail.symmetric.keyBits.aes = 128;
    p->parameters.eccDetail.symmetric.mode.aes = TPM2_ALG_CFB;
    p->parameters.eccDetail.scheme.scheme = TPM2_ALG_NULL;
    p->parameters.eccDetail.curveID = TPM2_ECC_NIST_P256;
    p->parameters.eccDetail.kdf.scheme = TPM2_ALG_NULL;
    p->unique.ecc.x.size = 32;
    p->unique.ecc.y.size = 32;
}

// The attestation key: a restricted P-256 ECDSA-SHA256 signing key. Restricted
// means the TPM signs with it only structures it produced itself (quotes,
// certifications), never a digest that merely starts with its magic; the
// symmetric scheme must be NULL for a signing key.
static inline void CTSS2_ak_template(TPM2B_PUBLIC *out) {
    memset(out, 0, sizeof *out);
    TPMT_PUBLIC *p = &out->publicArea;
    p->type = TPM2_ALG_ECC;
    p->nameAlg = TPM2_ALG_SHA256;
    p->objectAttributes = TPMA_OBJECT_RESTRICTED | TPMA_OBJECT_SIGN_ENCRYPT | TPMA_OBJECT_FIXEDTPM
        | TPMA_OBJECT_FIXEDPARENT | TPMA_OBJECT_SENSITIVEDATAORIGIN | TPMA_OBJECT_USERWITHAUTH;
    p->parameters.eccDetail.symmetric.algorithm = TPM2_ALG_NULL;
    p->parameters.eccDetail.scheme.scheme = TPM2_ALG_ECDSA;
    p->parameters.eccDetail.scheme.details.ecdsa.hashAlg = TPM2_ALG_SHA256;
    p->parameters.eccDetail.curveID = TPM2_ECC_NIST_P256;
    p->parameters.eccDetail.kdf.scheme = TPM2_ALG_NULL;
}

// Whether `pub` has the attestation key's shape: a persistent handle could
// hold anything another tool put there.
static inline int CTSS2_is_ak(const TPM2B_PUBLIC *pub) {
    const TPMT_PUBLIC *p = &pub->publicArea;
    TPMA_OBJECT need = TPMA_OBJECT_RESTRICTED | TPMA_OBJECT_SIGN_ENCRYPT | TPMA_OBJECT_FIXEDTPM | TPMA_OBJECT_FIXEDPARENT;
    return p->type == TPM2_ALG_ECC && p->parameters.eccDetail.curveID == TPM2_ECC_NIST_P256
        && (p->objectAttributes & need) == need && (p->objectAttributes & TPMA_OBJECT_DECRYPT) == 0
        && p->parameters.eccDetail.scheme.scheme == TPM2_ALG_ECDSA
        && p->parameters.eccDetail.scheme.details.ecdsa.hashAlg == TPM2_ALG_SHA256;
}

static inline TSS2_RC CTSS2_create_primary_ek(ESYS_CONTEXT *ctx, ESYS_TR *out) {
    TPM2B_PUBLIC template;
    CTSS2_ek_template(&template);
    TPM2B_SENSITIVE_CREATE sensitive = { 0 };
    TPM2B_DATA outside = { 0 };
    TPML_PCR_SELECTION pcrs = { 0 };
    return Esys_CreatePrimary(ctx, ESYS_TR_RH_ENDORSEMENT, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE,
                              &sensitive, &template, &outside, &pcrs, out, NULL, NULL, NULL, NULL);
}

// A policy session satisfying the EK's policy, PolicySecret(TPM_RH_ENDORSEMENT)
// with the (empty) endorsement password: the EK has no user auth, so every
// use of it as a parent or in ActivateCredential needs one. The caller flushes it.
static inline TSS2_RC CTSS2_ek_policy_session(ESYS_CONTEXT *ctx, ESYS_TR *session) {
    TPMT_SYM_DEF symmetric = { .algorithm = TPM2_ALG_NULL };
    TSS2_RC rc = Esys_StartAuthSession(ctx, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE,
                                       NULL, TPM2_SE_POLICY, &symmetric, TPM2_ALG_SHA256, session);
    if (rc != TSS2_RC_SUCCESS) return rc;
    rc = Esys_PolicySecret(ctx, ESYS_TR_RH_ENDORSEMENT, *session, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE,
                           NULL, NULL, NULL, 0, NULL, NULL);
    if (rc != TSS2_RC_SUCCESS) { Esys_FlushContext(ctx, *session); *session = ESYS_TR_NONE; }
    return rc;
}

// The AK under the EK: Create, then Load, each authorised by a fresh EK policy session.
static inline TSS2_RC CTSS2_create_load_ak(ESYS_CONTEXT *ctx, ESYS_TR ek, ESYS_TR *out) {
    TPM2B_PUBLIC template;
    CTSS2_ak_template(&template);
    TPM2B_SENSITIVE_CREATE sensitive = { 0 };
    TPM2B_DATA outside = { 0 };
    TPML_PCR_SELECTION pcrs = { 0 };
    TPM2B_PRIVATE *priv = NULL;
    TPM2B_PUBLIC *pub = NULL;
    ESYS_TR session = ESYS_TR_NONE;
    TSS2_RC rc = CTSS2_ek_policy_session(ctx, &session);
    if (rc != TSS2_RC_SUCCESS) return rc;
    rc = Esys_Create(ctx, ek, session, ESYS_TR_NONE, ESYS_TR_NONE, &sensitive, &template, &outside, &pcrs,
                     &priv, &pub, NULL, NULL, NULL);
    Esys_FlushContext(ctx, session);
    if (rc != TSS2_RC_SUCCESS) return rc;
    rc = CTSS2_ek_policy_session(ctx, &session);
    if (rc == TSS2_RC_SUCCESS) {
        rc = Esys_Load(ctx, ek, session, ESYS_TR_NONE, ESYS_TR_NONE, priv, pub, out);
        Esys_FlushContext(ctx, session);
    }
    Esys_Free(priv);
    Esys_Free(pub);
    return rc;
}

// The SHA-256 bank selection of the PCRs whose bits are set in `mask` (PCR 0–23).
static inline TPML_PCR_SELECTION CTSS2_sha256_selection(uint32_t mask) {
    TPML_PCR_SELECTION sel = { .count = 1 };
    sel.pcrSelections[0].hash = TPM2_ALG_SHA256;
    sel.pcrSelections[0].sizeofSelect = 3;
    sel.pcrSelections[0].pcrSelect[0] = mask & 0xFF;
    sel.pcrSelections[0].pcrSelect[1] = (mask >> 8) & 0xFF;
    sel.pcrSelections[0].pcrSelect[2] = (mask >> 16) & 0xFF;
    return sel;
}

// TPM2_PCR_Read of the SHA-256 PCRs in `mask` (at most 8, one reply), values
// concatenated in ascending index into `out` (32 bytes each). Fails when the
// TPM returned another selection (a bank not allocated, a PCR left out).
static inline TSS2_RC CTSS2_pcr_read(ESYS_CONTEXT *ctx, uint32_t mask, uint8_t *out, size_t outSize, size_t *written) {
    TPML_PCR_SELECTION sel = CTSS2_sha256_selection(mask);
    TPML_PCR_SELECTION *got = NULL;
    TPML_DIGEST *values = NULL;
    UINT32 counter = 0;
    TSS2_RC rc = Esys_PCR_Read(ctx, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, &sel, &counter, &got, &values);
    if (rc != TSS2_RC_SUCCESS) return rc;
    int same = got->count == 1 && got->pcrSelections[0].hash == TPM2_ALG_SHA256
        && got->pcrSelections[0].sizeofSelect >= 3
        && memcmp(got->pcrSelections[0].pcrSelect, sel.pcrSelections[0].pcrSelect, 3) == 0;
    size_t n = 0;
    for (UINT32 i = 0; same && i < values->count; i++) {
        if (values->digests[i].size != 32 || n + 32 > outSize) { same = 0; break; }
        memcpy(out + n, values->digests[i].buffer, 32);
        n += 32;
    }
    Esys_Free(got);
    Esys_Free(values);
    if (!same) return TSS2_ESYS_RC_MALFORMED_RESPONSE;
    *written = n;
    return TSS2_RC_SUCCESS;
}

// TPM2_Quote over the SHA-256 PCRs in `mask` with `nonce` as qualifying data:
// the TPMS_ATTEST bytes (without the TPM2B size) into `attest`, and the
// ECDSA signature's r and s left-padded to 32 bytes each.
static inline TSS2_RC CTSS2_quote(ESYS_CONTEXT *ctx, ESYS_TR ak, const uint8_t *nonce, size_t nonceSize, uint32_t mask,
                                  uint8_t *attest, size_t attestSize, size_t *attestWritten, uint8_t *r, uint8_t *s) {
    TPM2B_DATA qualifying = { .size = (UINT16)nonceSize };
    if (nonceSize > sizeof qualifying.buffer) return TSS2_ESYS_RC_BAD_VALUE;
    memcpy(qualifying.buffer, nonce, nonceSize);
    TPMT_SIG_SCHEME scheme = { .scheme = TPM2_ALG_ECDSA, .details.ecdsa.hashAlg = TPM2_ALG_SHA256 };
    TPML_PCR_SELECTION sel = CTSS2_sha256_selection(mask);
    TPM2B_ATTEST *quoted = NULL;
    TPMT_SIGNATURE *sig = NULL;
    TSS2_RC rc = Esys_Quote(ctx, ak, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE, &qualifying, &scheme, &sel, &quoted, &sig);
    if (rc != TSS2_RC_SUCCESS) return rc;
    const TPM2B_ECC_PARAMETER *pr = &sig->signature.ecdsa.signatureR, *ps = &sig->signature.ecdsa.signatureS;
    if (sig->sigAlg != TPM2_ALG_ECDSA || pr->size > 32 || ps->size > 32 || quoted->size > attestSize) {
        rc = TSS2_ESYS_RC_MALFORMED_RESPONSE;
    } else {
        memcpy(attest, quoted->attestationData, quoted->size);
        *attestWritten = quoted->size;
        memset(r, 0, 32); memset(s, 0, 32);
        memcpy(r + 32 - pr->size, pr->buffer, pr->size);
        memcpy(s + 32 - ps->size, ps->buffer, ps->size);
    }
    Esys_Free(quoted);
    Esys_Free(sig);
    return rc;
}

// The pcrDigest of a marshalled TPMS_ATTEST of a quote, through tss2's own
// unmarshaller: the device compares it with the PCRs it read.
static inline int CTSS2_attest_pcr_digest(const uint8_t *attest, size_t size, uint8_t *digest) {
    TPMS_ATTEST parsed;
    size_t offset = 0;
    if (Tss2_MU_TPMS_ATTEST_Unmarshal(attest, size, &offset, &parsed) != TSS2_RC_SUCCESS) return 0;
    if (parsed.type != TPM2_ST_ATTEST_QUOTE || parsed.attested.quote.pcrDigest.size != 32) return 0;
    memcpy(digest, parsed.attested.quote.pcrDigest.buffer, 32);
    return 1;
}

// TPM2_ActivateCredential: the AK (admin role, password) and the EK (a policy
// session) must both be in this TPM, or the secret stays sealed.
static inline TSS2_RC CTSS2_activate_credential(ESYS_CONTEXT *ctx, ESYS_TR ak, ESYS_TR ek,
                                                const TPM2B_ID_OBJECT *blob, const TPM2B_ENCRYPTED_SECRET *secret,
                                                uint8_t *out, size_t outSize, size_t *written) {
    ESYS_TR session = ESYS_TR_NONE;
    TSS2_RC rc = CTSS2_ek_policy_session(ctx, &session);
    if (rc != TSS2_RC_SUCCESS) return rc;
    TPM2B_DIGEST *cert = NULL;
    rc = Esys_ActivateCredential(ctx, ak, ek, ESYS_TR_PASSWORD, session, ESYS_TR_NONE, blob, secret, &cert);
    Esys_FlushContext(ctx, session);
    if (rc != TSS2_RC_SUCCESS) return rc;
    if (cert->size > outSize) { Esys_Free(cert); return TSS2_ESYS_RC_MALFORMED_RESPONSE; }
    memcpy(out, cert->buffer, cert->size);
    *written = cert->size;
    Esys_Free(cert);
    return TSS2_RC_SUCCESS;
}
