// tss2 (tpm2-tss 3.x, Debian's libtss2-dev) for OutpostTrust: ESYS to speak
// with the TPM, the TCTI loader to reach /dev/tpmrm0 or swtpm, MU to store key
// blobs, RC to name failures. The helpers exist because TPMT_PUBLIC is a nest
// of unions and fixed arrays that reads like the spec's tables only in C.
#include <tss2/tss2_esys.h>
#include <tss2/tss2_tctildr.h>
#include <tss2/tss2_mu.h>
#include <tss2/tss2_rc.h>
#include <string.h>

// The common part of every template here: an ECC P-256 key with SHA-256 names
// and no KDF, with `attributes`; the caller adds the symmetric and signing schemes.
static inline TPMT_PUBLIC *CTSS2_p256_template(TPM2B_PUBLIC *out, TPMA_OBJECT attributes) {
    memset(out, 0, sizeof *out);
    TPMT_PUBLIC *p = &out->publicArea;
    p->type = TPM2_ALG_ECC;
    p->nameAlg = TPM2_ALG_SHA256;
    p->objectAttributes = attributes;
    p->parameters.eccDetail.curveID = TPM2_ECC_NIST_P256;
    p->parameters.eccDetail.kdf.scheme = TPM2_ALG_NULL;
    return p;
}

// A storage parent (restricted decrypt) as the TCG templates have it:
// AES-128-CFB for its children, no signing scheme, a 32-byte unique point.
static inline void CTSS2_storage_parent(TPMT_PUBLIC *p) {
    p->parameters.eccDetail.symmetric.algorithm = TPM2_ALG_AES;
    p->parameters.eccDetail.symmetric.keyBits.aes = 128;
    p->parameters.eccDetail.symmetric.mode.aes = TPM2_ALG_CFB;
    p->parameters.eccDetail.scheme.scheme = TPM2_ALG_NULL;
    p->unique.ecc.x.size = 32;
    p->unique.ecc.y.size = 32;
}

// A signing key: ECDSA over SHA-256, no symmetric scheme (a signing key must have none).
static inline void CTSS2_ecdsa_signer(TPMT_PUBLIC *p) {
    p->parameters.eccDetail.symmetric.algorithm = TPM2_ALG_NULL;
    p->parameters.eccDetail.scheme.scheme = TPM2_ALG_ECDSA;
    p->parameters.eccDetail.scheme.details.ecdsa.hashAlg = TPM2_ALG_SHA256;
}

// The storage root key: the TCG's standard ECC P-256 SRK template (restricted
// decrypt, AES-128-CFB), so any tool that knows the template finds the same key.
static inline void CTSS2_srk_template(TPM2B_PUBLIC *out) {
    CTSS2_storage_parent(CTSS2_p256_template(out, TPMA_OBJECT_RESTRICTED | TPMA_OBJECT_DECRYPT | TPMA_OBJECT_FIXEDTPM
        | TPMA_OBJECT_FIXEDPARENT | TPMA_OBJECT_SENSITIVEDATAORIGIN | TPMA_OBJECT_USERWITHAUTH | TPMA_OBJECT_NODA));
}

// The device key: an unrestricted P-256 ECDSA-SHA256 signing key that never
// leaves this TPM (fixedTPM, fixedParent) and was generated inside it.
static inline void CTSS2_signing_key_template(TPM2B_PUBLIC *out) {
    CTSS2_ecdsa_signer(CTSS2_p256_template(out, TPMA_OBJECT_SIGN_ENCRYPT | TPMA_OBJECT_FIXEDTPM | TPMA_OBJECT_FIXEDPARENT
        | TPMA_OBJECT_SENSITIVEDATAORIGIN | TPMA_OBJECT_USERWITHAUTH));
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
    TPMT_PUBLIC *p = CTSS2_p256_template(out, TPMA_OBJECT_FIXEDTPM | TPMA_OBJECT_FIXEDPARENT | TPMA_OBJECT_SENSITIVEDATAORIGIN
        | TPMA_OBJECT_ADMINWITHPOLICY | TPMA_OBJECT_RESTRICTED | TPMA_OBJECT_DECRYPT);
    p->authPolicy.size = 32;
    memcpy(p->authPolicy.buffer, policy, 32);
    CTSS2_storage_parent(p);
}

// The attestation key: a restricted P-256 ECDSA-SHA256 signing key. Restricted
// means the TPM signs with it only structures it produced itself (quotes,
// certifications), never a digest that merely starts with its magic; the
// symmetric scheme must be NULL for a signing key.
static inline void CTSS2_ak_template(TPM2B_PUBLIC *out) {
    CTSS2_ecdsa_signer(CTSS2_p256_template(out, TPMA_OBJECT_RESTRICTED | TPMA_OBJECT_SIGN_ENCRYPT | TPMA_OBJECT_FIXEDTPM
        | TPMA_OBJECT_FIXEDPARENT | TPMA_OBJECT_SENSITIVEDATAORIGIN | TPMA_OBJECT_USERWITHAUTH));
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

// ---- The vault (OutpostTrust's TPMVault) ----

// TPM2_NV_DefineSpace under the owner hierarchy (empty owner password) of an
// index with an empty auth value and no policy.
static inline TSS2_RC CTSS2_nv_define(ESYS_CONTEXT *ctx, uint32_t index, uint32_t attributes, uint16_t dataSize, ESYS_TR *out) {
    TPM2B_AUTH auth = { 0 };
    TPM2B_NV_PUBLIC pub = { 0 };
    pub.nvPublic.nvIndex = index;
    pub.nvPublic.nameAlg = TPM2_ALG_SHA256;
    pub.nvPublic.attributes = attributes;
    pub.nvPublic.dataSize = dataSize;
    return Esys_NV_DefineSpace(ctx, ESYS_TR_RH_OWNER, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE, &auth, &pub, out);
}

// TPM2_NV_ReadPublic: the index's attributes and the name the TPM computes
// (at most 68 bytes into `name`).
static inline TSS2_RC CTSS2_nv_read_public(ESYS_CONTEXT *ctx, ESYS_TR nv, uint32_t *attributes, uint8_t *name, size_t *nameSize) {
    TPM2B_NV_PUBLIC *pub = NULL;
    TPM2B_NAME *got = NULL;
    TSS2_RC rc = Esys_NV_ReadPublic(ctx, nv, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, &pub, &got);
    if (rc != TSS2_RC_SUCCESS) return rc;
    if (got->size > sizeof got->name) { rc = TSS2_ESYS_RC_MALFORMED_RESPONSE; }
    else {
        *attributes = pub->nvPublic.attributes;
        memcpy(name, got->name, got->size);
        *nameSize = got->size;
    }
    Esys_Free(pub);
    Esys_Free(got);
    return rc;
}

// TPM2_NV_Read of an 8-byte counter with owner authorisation, as the
// big-endian number the TPM stores.
static inline TSS2_RC CTSS2_nv_read_counter(ESYS_CONTEXT *ctx, ESYS_TR nv, uint64_t *value) {
    TPM2B_MAX_NV_BUFFER *data = NULL;
    TSS2_RC rc = Esys_NV_Read(ctx, ESYS_TR_RH_OWNER, nv, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE, 8, 0, &data);
    if (rc != TSS2_RC_SUCCESS) return rc;
    if (data->size != 8) { Esys_Free(data); return TSS2_ESYS_RC_MALFORMED_RESPONSE; }
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) v = (v << 8) | data->buffer[i];
    *value = v;
    Esys_Free(data);
    return TSS2_RC_SUCCESS;
}

static inline TSS2_RC CTSS2_nv_increment(ESYS_CONTEXT *ctx, ESYS_TR nv) {
    return Esys_NV_Increment(ctx, ESYS_TR_RH_OWNER, nv, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE);
}

// An HMAC session salted with `saltKey` (the storage root key) that
// encrypts the command's first parameter (AES-128-CFB): authorises the
// parent's empty auth and keeps a secret being sealed off the bus in the clear.
static inline TSS2_RC CTSS2_start_encrypting_hmac_session(ESYS_CONTEXT *ctx, ESYS_TR saltKey, ESYS_TR *session) {
    TPMT_SYM_DEF symmetric = { .algorithm = TPM2_ALG_AES, .keyBits.aes = 128, .mode.aes = TPM2_ALG_CFB };
    TSS2_RC rc = Esys_StartAuthSession(ctx, saltKey, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE,
                                       NULL, TPM2_SE_HMAC, &symmetric, TPM2_ALG_SHA256, session);
    if (rc != TSS2_RC_SUCCESS) return rc;
    rc = Esys_TRSess_SetAttributes(ctx, *session, TPMA_SESSION_CONTINUESESSION | TPMA_SESSION_DECRYPT, 0xFF);
    if (rc != TSS2_RC_SUCCESS) { Esys_FlushContext(ctx, *session); *session = ESYS_TR_NONE; }
    return rc;
}

// A sealed-data object (KEYEDHASH, no scheme) holding `secret` under
// `parent`: fixedTPM | fixedParent | adminWithPolicy and no userWithAuth, so
// `policy` (32 bytes, SHA-256) is the only way to unseal or administer it.
// The parent is authorised by `session` (an encrypting HMAC session).
static inline TSS2_RC CTSS2_seal(ESYS_CONTEXT *ctx, ESYS_TR parent, ESYS_TR session, const uint8_t *policy,
                                 const uint8_t *secret, size_t secretSize, TPM2B_PRIVATE **outPrivate, TPM2B_PUBLIC **outPublic) {
    TPM2B_SENSITIVE_CREATE sensitive = { 0 };
    if (secretSize == 0 || secretSize > sizeof sensitive.sensitive.data.buffer) return TSS2_ESYS_RC_BAD_VALUE;
    sensitive.sensitive.data.size = (UINT16)secretSize;
    memcpy(sensitive.sensitive.data.buffer, secret, secretSize);
    TPM2B_PUBLIC template = { 0 };
    TPMT_PUBLIC *p = &template.publicArea;
    p->type = TPM2_ALG_KEYEDHASH;
    p->nameAlg = TPM2_ALG_SHA256;
    p->objectAttributes = TPMA_OBJECT_FIXEDTPM | TPMA_OBJECT_FIXEDPARENT | TPMA_OBJECT_ADMINWITHPOLICY;
    p->authPolicy.size = 32;
    memcpy(p->authPolicy.buffer, policy, 32);
    p->parameters.keyedHashDetail.scheme.scheme = TPM2_ALG_NULL;
    TPM2B_DATA outside = { 0 };
    TPML_PCR_SELECTION pcrs = { 0 };
    TSS2_RC rc = Esys_Create(ctx, parent, session, ESYS_TR_NONE, ESYS_TR_NONE,
                             &sensitive, &template, &outside, &pcrs, outPrivate, outPublic, NULL, NULL, NULL);
    memset(&sensitive, 0, sizeof sensitive);
    return rc;
}

// Whether `pub` is a sealed-data object of the vault's shape; its authPolicy
// (32 bytes) into `policy`. A blob file could hold any object.
static inline int CTSS2_is_sealed_data(const TPM2B_PUBLIC *pub, uint8_t *policy, uint32_t *attributes) {
    const TPMT_PUBLIC *p = &pub->publicArea;
    if (p->type != TPM2_ALG_KEYEDHASH || p->nameAlg != TPM2_ALG_SHA256 || p->authPolicy.size != 32
        || p->parameters.keyedHashDetail.scheme.scheme != TPM2_ALG_NULL) return 0;
    memcpy(policy, p->authPolicy.buffer, 32);
    *attributes = p->objectAttributes;
    return 1;
}

// A policy session, salted with `saltKey` (the storage root key) and with
// AES-128-CFB parameter encryption of responses, so the unsealed secret does
// not cross the bus to the TPM in the clear.
static inline TSS2_RC CTSS2_start_policy_session(ESYS_CONTEXT *ctx, ESYS_TR saltKey, ESYS_TR *session) {
    TPMT_SYM_DEF symmetric = { .algorithm = TPM2_ALG_AES, .keyBits.aes = 128, .mode.aes = TPM2_ALG_CFB };
    TSS2_RC rc = Esys_StartAuthSession(ctx, saltKey, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE,
                                       NULL, TPM2_SE_POLICY, &symmetric, TPM2_ALG_SHA256, session);
    if (rc != TSS2_RC_SUCCESS) return rc;
    rc = Esys_TRSess_SetAttributes(ctx, *session, TPMA_SESSION_CONTINUESESSION | TPMA_SESSION_ENCRYPT, 0xFF);
    if (rc != TSS2_RC_SUCCESS) { Esys_FlushContext(ctx, *session); *session = ESYS_TR_NONE; }
    return rc;
}

// TPM2_PolicyNV with owner authorisation (empty password).
static inline TSS2_RC CTSS2_policy_nv(ESYS_CONTEXT *ctx, ESYS_TR nv, ESYS_TR session, const uint8_t *operand, size_t size,
                                      uint16_t offset, uint16_t operation) {
    TPM2B_OPERAND operandB = { .size = (UINT16)size };
    if (size > sizeof operandB.buffer) return TSS2_ESYS_RC_BAD_VALUE;
    memcpy(operandB.buffer, operand, size);
    return Esys_PolicyNV(ctx, ESYS_TR_RH_OWNER, nv, session, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE,
                         &operandB, offset, operation);
}

// TPM2_PolicyPCR over the SHA-256 PCRs in `mask` with an empty pcrDigest: the
// TPM uses the values it holds now.
static inline TSS2_RC CTSS2_policy_pcr(ESYS_CONTEXT *ctx, ESYS_TR session, uint32_t mask) {
    TPM2B_DIGEST empty = { 0 };
    TPML_PCR_SELECTION sel = CTSS2_sha256_selection(mask);
    return Esys_PolicyPCR(ctx, session, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, &empty, &sel);
}

// TPM2_LoadExternal of a public key alone (a marshalled TPM2B_PUBLIC) in the
// owner hierarchy: a key loaded in the null hierarchy gets only a null ticket
// from VerifySignature, which PolicyAuthorize refuses.
static inline TSS2_RC CTSS2_load_external(ESYS_CONTEXT *ctx, const uint8_t *sizedPublic, size_t size, ESYS_TR *out) {
    TPM2B_PUBLIC pub = { 0 };
    size_t offset = 0;
    TSS2_RC rc = Tss2_MU_TPM2B_PUBLIC_Unmarshal(sizedPublic, size, &offset, &pub);
    if (rc != TSS2_RC_SUCCESS) return rc;
    if (offset != size) return TSS2_ESYS_RC_BAD_VALUE;
    return Esys_LoadExternal(ctx, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, NULL, &pub, ESYS_TR_RH_OWNER, out);
}

// The name ESYS holds for `object` (at most 68 bytes).
static inline TSS2_RC CTSS2_object_name(ESYS_CONTEXT *ctx, ESYS_TR object, uint8_t *name, size_t *nameSize) {
    TPM2B_NAME *got = NULL;
    TSS2_RC rc = Esys_TR_GetName(ctx, object, &got);
    if (rc != TSS2_RC_SUCCESS) return rc;
    if (got->size > sizeof got->name) { Esys_Free(got); return TSS2_ESYS_RC_MALFORMED_RESPONSE; }
    memcpy(name, got->name, got->size);
    *nameSize = got->size;
    Esys_Free(got);
    return TSS2_RC_SUCCESS;
}

// TPM2_VerifySignature of a 32-byte digest and a marshalled TPMT_SIGNATURE;
// the caller frees the ticket with CTSS2_free_ticket.
static inline TSS2_RC CTSS2_verify_signature(ESYS_CONTEXT *ctx, ESYS_TR key, const uint8_t *digest,
                                             const uint8_t *signature, size_t signatureSize, TPMT_TK_VERIFIED **ticket) {
    TPM2B_DIGEST in = { .size = 32 };
    memcpy(in.buffer, digest, 32);
    TPMT_SIGNATURE sig;
    memset(&sig, 0, sizeof sig);
    size_t offset = 0;
    TSS2_RC rc = Tss2_MU_TPMT_SIGNATURE_Unmarshal(signature, signatureSize, &offset, &sig);
    if (rc != TSS2_RC_SUCCESS) return rc;
    if (offset != signatureSize) return TSS2_ESYS_RC_BAD_VALUE;
    return Esys_VerifySignature(ctx, key, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, &in, &sig, ticket);
}

static inline void CTSS2_free_ticket(TPMT_TK_VERIFIED *t) { Esys_Free(t); }

// TPM2_PolicyAuthorize: the session's digest must equal `approved` (32
// bytes), and `ticket` must be VerifySignature's for `keyName` over
// SHA-256(approved ‖ policyRef).
static inline TSS2_RC CTSS2_policy_authorize(ESYS_CONTEXT *ctx, ESYS_TR session, const uint8_t *approved,
                                             const uint8_t *policyRef, size_t refSize, const uint8_t *keyName, size_t nameSize,
                                             const TPMT_TK_VERIFIED *ticket) {
    TPM2B_DIGEST approvedPolicy = { .size = 32 };
    memcpy(approvedPolicy.buffer, approved, 32);
    TPM2B_NONCE ref = { .size = (UINT16)refSize };
    TPM2B_NAME name = { .size = (UINT16)nameSize };
    if (refSize > sizeof ref.buffer || nameSize > sizeof name.name) return TSS2_ESYS_RC_BAD_VALUE;
    memcpy(ref.buffer, policyRef, refSize);
    memcpy(name.name, keyName, nameSize);
    return Esys_PolicyAuthorize(ctx, session, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, &approvedPolicy, &ref, &name, ticket);
}

// The session's current policy digest (32 bytes), to tell the operator which
// part of the policy did not hold.
static inline TSS2_RC CTSS2_policy_digest(ESYS_CONTEXT *ctx, ESYS_TR session, uint8_t *digest) {
    TPM2B_DIGEST *got = NULL;
    TSS2_RC rc = Esys_PolicyGetDigest(ctx, session, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, &got);
    if (rc != TSS2_RC_SUCCESS) return rc;
    if (got->size != 32) { Esys_Free(got); return TSS2_ESYS_RC_MALFORMED_RESPONSE; }
    memcpy(digest, got->buffer, 32);
    Esys_Free(got);
    return TSS2_RC_SUCCESS;
}

// TPM2_Load of marshalled TPM2B_PUBLIC and TPM2B_PRIVATE under `parent` (password session).
static inline TSS2_RC CTSS2_load_blobs(ESYS_CONTEXT *ctx, ESYS_TR parent, const uint8_t *publicBytes, size_t publicSize,
                                       const uint8_t *privateBytes, size_t privateSize, ESYS_TR *out) {
    TPM2B_PUBLIC pub = { 0 };
    TPM2B_PRIVATE priv = { 0 };
    size_t offset = 0;
    TSS2_RC rc = Tss2_MU_TPM2B_PUBLIC_Unmarshal(publicBytes, publicSize, &offset, &pub);
    if (rc != TSS2_RC_SUCCESS) return rc;
    offset = 0;
    rc = Tss2_MU_TPM2B_PRIVATE_Unmarshal(privateBytes, privateSize, &offset, &priv);
    if (rc != TSS2_RC_SUCCESS) return rc;
    return Esys_Load(ctx, parent, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE, &priv, &pub, out);
}

// TPM2_Unseal authorised by `session` (a policy session, or ESYS_TR_PASSWORD).
static inline TSS2_RC CTSS2_unseal(ESYS_CONTEXT *ctx, ESYS_TR item, ESYS_TR session, uint8_t *out, size_t outSize, size_t *written) {
    TPM2B_SENSITIVE_DATA *data = NULL;
    TSS2_RC rc = Esys_Unseal(ctx, item, session, ESYS_TR_NONE, ESYS_TR_NONE, &data);
    if (rc != TSS2_RC_SUCCESS) return rc;
    if (data->size > outSize) { Esys_Free(data); return TSS2_ESYS_RC_MALFORMED_RESPONSE; }
    memcpy(out, data->buffer, data->size);
    *written = data->size;
    memset(data->buffer, 0, data->size);
    Esys_Free(data);
    return TSS2_RC_SUCCESS;
}

// TPM2_PCR_Extend of the SHA-256 bank of PCR `pcr` with `digest` (32 bytes).
static inline TSS2_RC CTSS2_pcr_extend_sha256(ESYS_CONTEXT *ctx, uint32_t pcr, const uint8_t *digest) {
    TPML_DIGEST_VALUES values = { .count = 1 };
    values.digests[0].hashAlg = TPM2_ALG_SHA256;
    memcpy(values.digests[0].digest.sha256, digest, 32);
    return Esys_PCR_Extend(ctx, ESYS_TR_PCR0 + pcr, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE, &values);
}
