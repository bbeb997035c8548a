/*
 *  outpost_select: Outpost's A/B slot selection for stage-1 GRUB.
 *
 *  This module implements the boot selection of docs/ARCHITECTURE.md
 *  ("Boot selection") against the raw GPT of the boot disk:
 *
 *    1. Among partitions of the Outpost slot type
 *       (5DFBF5F4-2848-4BAC-AA5E-0D9A20B745A6) a slot is a candidate when
 *       tries > 0 || successful.  The attribute bits follow the ChromeOS
 *       layout: priority = bits 48-51, tries = 52-55, successful = 56.
 *    2. The highest priority wins; on a tie the lower partition number wins.
 *    3. If the winner has tries > 0, tries is decremented and the GPT is
 *       written BEFORE the command returns: backup entries + backup header
 *       first, then primary entries + primary header.  A power cut at any
 *       instant therefore leaves at least one valid copy that either still
 *       has the old tries (the attempt is repeated) or the new one.
 *    4. If no slot qualifies the command fails; stage 1 then runs
 *       `outpost_select --rescue`, which picks the lowest-numbered slot
 *       partition and never writes.
 *
 *  The same algorithm exists in Swift (OutpostDisk); QEMU tests prove that
 *  both agree.  GRUB's own part_gpt does not check CRCs, so this module
 *  reads and validates the GPT itself: a torn or corrupt primary must never
 *  make us act on garbage attributes.
 *
 *  Usage: outpost_select [--set-prefix=VAR] [--set-root] [--rescue] [DISK]
 *
 *  DISK is a GRUB device name: hd0, (hd0), or a partition such as hd0,gpt1
 *  (its whole disk is used).  Without DISK the disk of $root is used, which
 *  at stage 1 is the disk holding the EFI partition GRUB was loaded from.
 *  Keeping the disk name out of the command line also keeps the text that
 *  the tpm module measures into PCR 8 independent of firmware enumeration.
 *
 *  Sets VAR_part (gptN), VAR_uuid (PARTUUID, upper case) and VAR_name
 *  (partition name), VAR defaulting to "outpost_slot".  They are exported
 *  so a configfile'd stage 2 sees them.  --set-root also sets $root to
 *  DISK,gptN.
 *
 *  Copyright (C) 2025 The Outpost authors.  GPLv3+, like GRUB itself.
 */

#include <grub/types.h>
#include <grub/misc.h>
#include <grub/mm.h>
#include <grub/err.h>
#include <grub/dl.h>
#include <grub/disk.h>
#include <grub/env.h>
#include <grub/extcmd.h>
#include <grub/i18n.h>

GRUB_MOD_LICENSE ("GPLv3+");

/* ---- on-disk GPT layout (UEFI 2.x, 5.3) ---- */

#define GPT_SIGNATURE     "EFI PART"
#define GPT_HEADER_MIN    92
#define GPT_ENTRY_MIN     128
/* Refuse absurd entry arrays instead of allocating whatever a corrupt
   header says: 128 KiB is far beyond any real layout (16 KiB typical).  */
#define GPT_ENTRIES_MAX_BYTES (128 * 1024)

struct gpt_header
{
  grub_uint8_t  signature[8];
  grub_uint32_t revision;
  grub_uint32_t header_size;
  grub_uint32_t header_crc32;
  grub_uint32_t reserved;
  grub_uint64_t my_lba;
  grub_uint64_t alternate_lba;
  grub_uint64_t first_usable_lba;
  grub_uint64_t last_usable_lba;
  grub_uint8_t  disk_guid[16];
  grub_uint64_t entries_lba;
  grub_uint32_t num_entries;
  grub_uint32_t entry_size;
  grub_uint32_t entries_crc32;
} GRUB_PACKED;

struct gpt_entry
{
  grub_uint8_t  type_guid[16];
  grub_uint8_t  unique_guid[16];
  grub_uint64_t first_lba;
  grub_uint64_t last_lba;
  grub_uint64_t attributes;
  grub_uint16_t name[36];
} GRUB_PACKED;

/* 5DFBF5F4-2848-4BAC-AA5E-0D9A20B745A6 as stored on disk (the first three
   fields little-endian).  */
static const grub_uint8_t outpost_slot_type[16] = {
  0xf4, 0xf5, 0xfb, 0x5d, 0x48, 0x28, 0xac, 0x4b,
  0xaa, 0x5e, 0x0d, 0x9a, 0x20, 0xb7, 0x45, 0xa6
};

#define ATTR_PRIORITY(a)   ((unsigned) (((a) >> 48) & 0xf))
#define ATTR_TRIES(a)      ((unsigned) (((a) >> 52) & 0xf))
#define ATTR_SUCCESSFUL(a) ((unsigned) (((a) >> 56) & 0x1))
#define ATTR_TRIES_MASK    (0xfULL << 52)

/* One validated copy of the GPT: header sector + entry array.  */
struct gpt_copy
{
  grub_uint8_t *hdr_sector;        /* one logical sector, header at 0 */
  grub_uint8_t *entries;           /* entries_bytes, rounded to sectors */
  grub_size_t entries_bytes;       /* num_entries * entry_size */
  grub_size_t entries_sectors;     /* in logical sectors */
};

/* CRC-32 (IEEE 802.3, reflected, poly 0xEDB88320) as the GPT uses.  GRUB's
   built-in grub_getcrc32c is CRC-32C (a different polynomial), so it cannot
   be used here.  Bitwise: the entry array is at most 128 KiB and this runs
   once per boot, so a table is not worth the memory.  */
static grub_uint32_t
crc32_ieee (const grub_uint8_t *buf, grub_size_t len)
{
  grub_uint32_t crc = 0xffffffff;
  grub_size_t i;
  int k;

  for (i = 0; i < len; i++)
    {
      crc ^= buf[i];
      for (k = 0; k < 8; k++)
	crc = (crc >> 1) ^ (0xedb88320 & (-(crc & 1)));
    }
  return crc ^ 0xffffffff;
}

static grub_uint32_t
header_crc (const grub_uint8_t *hdr_sector)
{
  const struct gpt_header *h = (const struct gpt_header *) hdr_sector;
  grub_uint32_t size = grub_le_to_cpu32 (h->header_size);
  grub_uint8_t tmp[512];

  /* header_size is validated to be <= the sector size and <= 512 is what
     every implementation writes; anything bigger is rejected earlier.  */
  grub_memcpy (tmp, hdr_sector, size);
  ((struct gpt_header *) tmp)->header_crc32 = 0;
  return crc32_ieee (tmp, size);
}

static void
free_copy (struct gpt_copy *c)
{
  grub_free (c->hdr_sector);
  grub_free (c->entries);
  c->hdr_sector = c->entries = 0;
}

/* Byte address of logical block LBA in GRUB's 512-byte sector units.  */
static grub_disk_addr_t
lba_to_sector (grub_disk_t disk, grub_uint64_t lba)
{
  return lba << (disk->log_sector_size - GRUB_DISK_SECTOR_BITS);
}

/* Read the GPT header at LBA and its entry array, and validate both.
   Returns GRUB_ERR_NONE and fills C, or an error naming what is wrong.  */
static grub_err_t
read_copy (grub_disk_t disk, grub_uint64_t lba, grub_uint64_t last_lba,
	   const char *which, struct gpt_copy *c)
{
  grub_size_t ssize = (grub_size_t) 1 << disk->log_sector_size;
  struct gpt_header *h;
  grub_uint32_t hsize, n, esize;
  grub_uint64_t elba;

  grub_memset (c, 0, sizeof (*c));
  c->hdr_sector = grub_malloc (ssize);
  if (!c->hdr_sector)
    return grub_errno;
  if (grub_disk_read (disk, lba_to_sector (disk, lba), 0, ssize,
		      c->hdr_sector))
    goto fail;
  h = (struct gpt_header *) c->hdr_sector;

  hsize = grub_le_to_cpu32 (h->header_size);
  if (grub_memcmp (h->signature, GPT_SIGNATURE, 8) != 0)
    {
      grub_error (GRUB_ERR_BAD_PART_TABLE, "%s GPT header: no signature", which);
      goto fail;
    }
  if (hsize < GPT_HEADER_MIN || hsize > ssize || hsize > 512)
    {
      grub_error (GRUB_ERR_BAD_PART_TABLE, "%s GPT header: bad size %u",
		  which, hsize);
      goto fail;
    }
  if (header_crc (c->hdr_sector) != grub_le_to_cpu32 (h->header_crc32))
    {
      grub_error (GRUB_ERR_BAD_PART_TABLE, "%s GPT header: CRC mismatch", which);
      goto fail;
    }
  if (grub_le_to_cpu64 (h->my_lba) != lba)
    {
      grub_error (GRUB_ERR_BAD_PART_TABLE, "%s GPT header: MyLBA is not %llu",
		  which, (unsigned long long) lba);
      goto fail;
    }

  n = grub_le_to_cpu32 (h->num_entries);
  esize = grub_le_to_cpu32 (h->entry_size);
  elba = grub_le_to_cpu64 (h->entries_lba);
  if (esize < GPT_ENTRY_MIN || (esize % 8) != 0 || n == 0
      || (grub_uint64_t) n * esize > GPT_ENTRIES_MAX_BYTES)
    {
      grub_error (GRUB_ERR_BAD_PART_TABLE,
		  "%s GPT header: bad entry array (%u x %u bytes)",
		  which, n, esize);
      goto fail;
    }
  c->entries_bytes = (grub_size_t) n * esize;
  c->entries_sectors = (c->entries_bytes + ssize - 1) / ssize;
  if (elba < 2 || elba > last_lba || c->entries_sectors > last_lba - elba + 1)
    {
      grub_error (GRUB_ERR_BAD_PART_TABLE,
		  "%s GPT header: entry array LBA %llu out of range",
		  which, (unsigned long long) elba);
      goto fail;
    }

  c->entries = grub_zalloc (c->entries_sectors * ssize);
  if (!c->entries)
    goto fail;
  if (grub_disk_read (disk, lba_to_sector (disk, elba), 0,
		      c->entries_sectors * ssize, c->entries))
    goto fail;
  if (crc32_ieee (c->entries, c->entries_bytes)
      != grub_le_to_cpu32 (h->entries_crc32))
    {
      grub_error (GRUB_ERR_BAD_PART_TABLE, "%s GPT entries: CRC mismatch",
		  which);
      goto fail;
    }
  return GRUB_ERR_NONE;

 fail:
  free_copy (c);
  return grub_errno;
}

/* Write one copy (entries first, header last) of the GPT described by SRC's
   header and ENTRIES, placed at header LBA MY, with alternate ALT and entry
   array at ELBA.  Writing the header last means a cut between the two
   leaves this copy with a header CRC that still matches the old header but
   an entries CRC that no longer matches, so it is detected as invalid and
   the other copy is used.  */
static grub_err_t
write_copy (grub_disk_t disk, const struct gpt_copy *src,
	    const grub_uint8_t *entries, grub_uint64_t my, grub_uint64_t alt,
	    grub_uint64_t elba)
{
  grub_size_t ssize = (grub_size_t) 1 << disk->log_sector_size;
  grub_uint8_t *sector;
  struct gpt_header *h;
  grub_err_t err;

  sector = grub_malloc (ssize);
  if (!sector)
    return grub_errno;
  grub_memcpy (sector, src->hdr_sector, ssize);
  h = (struct gpt_header *) sector;
  h->my_lba = grub_cpu_to_le64 (my);
  h->alternate_lba = grub_cpu_to_le64 (alt);
  h->entries_lba = grub_cpu_to_le64 (elba);
  h->entries_crc32 = grub_cpu_to_le32 (crc32_ieee (entries, src->entries_bytes));
  h->header_crc32 = grub_cpu_to_le32 (header_crc (sector));

  err = grub_disk_write (disk, lba_to_sector (disk, elba), 0,
			 src->entries_sectors * ssize, entries);
  if (!err)
    err = grub_disk_write (disk, lba_to_sector (disk, my), 0, ssize, sector);
  grub_free (sector);
  return err;
}

/* "5DFBF5F4-2848-4BAC-AA5E-0D9A20B745A6": the first three fields are
   stored little-endian, the last two big-endian (RFC 4122 / UEFI text).  */
static void
guid_to_text (const grub_uint8_t *g, char *out)
{
  grub_snprintf (out, 37,
		 "%02X%02X%02X%02X-%02X%02X-%02X%02X-%02X%02X-"
		 "%02X%02X%02X%02X%02X%02X",
		 g[3], g[2], g[1], g[0], g[5], g[4], g[7], g[6],
		 g[8], g[9], g[10], g[11], g[12], g[13], g[14], g[15]);
}

/* GPT names are UTF-16LE.  Slot names are ASCII by contract ("IMGA");
   anything else is shown as '?' rather than mis-decoded.  */
static void
name_to_ascii (const struct gpt_entry *e, char *out)
{
  int i;
  for (i = 0; i < 36; i++)
    {
      grub_uint16_t ch = grub_le_to_cpu16 (e->name[i]);
      if (ch == 0)
	break;
      out[i] = (ch >= 0x20 && ch < 0x7f) ? (char) ch : '?';
    }
  out[i] = '\0';
}

static grub_err_t
set_var (const char *prefix, const char *suffix, const char *value)
{
  char *name = grub_xasprintf ("%s_%s", prefix, suffix);
  grub_err_t err;

  if (!name)
    return grub_errno;
  err = grub_env_set (name, value);
  if (!err)
    err = grub_env_export (name);
  grub_free (name);
  return err;
}

enum { OPT_SET_PREFIX, OPT_SET_ROOT, OPT_RESCUE };

static const struct grub_arg_option options[] = {
  {"set-prefix", 'p', 0,
   N_("Name the result variables VAR_part, VAR_uuid, VAR_name "
      "(default outpost_slot)."), N_("VAR"), ARG_TYPE_STRING},
  {"set-root", 'r', 0, N_("Also set $root to the chosen slot."), 0, 0},
  {"rescue", 0, 0,
   N_("Pick the lowest-numbered slot partition regardless of its "
      "attributes, and never write (the documented rescue)."), 0, 0},
  {0, 0, 0, 0, 0, 0}
};

/* "hd0", "(hd0)", "hd0,gpt1", "(hd0,gpt1)" -> "hd0".  */
static char *
whole_disk_name (const char *dev)
{
  const char *start = dev, *end;

  if (*start == '(')
    start++;
  end = start;
  while (*end && *end != ',' && *end != ')')
    end++;
  if (end == start)
    {
      grub_error (GRUB_ERR_BAD_ARGUMENT, "outpost_select: empty disk name `%s'",
		  dev);
      return 0;
    }
  return grub_strndup (start, end - start);
}

static grub_err_t
grub_cmd_outpost_select (grub_extcmd_context_t ctxt, int argc, char **args)
{
  struct grub_arg_list *state = ctxt->state;
  const char *prefix = state[OPT_SET_PREFIX].set
    ? state[OPT_SET_PREFIX].arg : "outpost_slot";
  int rescue = state[OPT_RESCUE].set;
  const char *dev;
  char *diskname = 0;
  grub_disk_t disk = 0;
  struct gpt_copy primary, backup, *good;
  grub_err_t perr, berr;
  grub_uint64_t last_lba, alt_lba;
  struct gpt_header *h;
  grub_uint32_t n, esize, i;
  int best = -1;
  grub_uint64_t best_attr = 0;
  struct gpt_entry *e;
  char uuid[37], name[37], part[16];

  grub_memset (&primary, 0, sizeof (primary));
  grub_memset (&backup, 0, sizeof (backup));

  if (argc > 1)
    return grub_error (GRUB_ERR_BAD_ARGUMENT,
		       "outpost_select: expected at most one DISK argument");
  dev = argc == 1 ? args[0] : grub_env_get ("root");
  if (!dev || !*dev)
    return grub_error (GRUB_ERR_BAD_ARGUMENT,
		       "outpost_select: no DISK given and $root is not set");
  diskname = whole_disk_name (dev);
  if (!diskname)
    return grub_errno;

  disk = grub_disk_open (diskname);
  if (!disk)
    goto out;
  if (disk->log_sector_size < GRUB_DISK_SECTOR_BITS
      || disk->total_sectors == GRUB_DISK_SIZE_UNKNOWN
      || disk->total_sectors < 68)
    {
      grub_error (GRUB_ERR_BAD_DEVICE,
		  "outpost_select: %s: unknown or too small size", diskname);
      goto out;
    }
  /* total_sectors is in logical sectors.  */
  last_lba = disk->total_sectors - 1;

  /* Primary at LBA 1; the backup where the primary says, or, when the
     primary is unusable, at the last LBA of the disk.  */
  perr = read_copy (disk, 1, last_lba, "primary", &primary);
  if (perr)
    {
      grub_printf ("outpost_select: %s: %s; trying the backup GPT\n",
		   diskname, grub_errmsg);
      grub_errno = GRUB_ERR_NONE;
    }
  alt_lba = perr ? last_lba
    : grub_le_to_cpu64 (((struct gpt_header *) primary.hdr_sector)->alternate_lba);
  if (alt_lba <= 1 || alt_lba > last_lba)
    alt_lba = last_lba;
  berr = read_copy (disk, alt_lba, last_lba, "backup", &backup);
  if (berr)
    {
      if (!perr)
	grub_printf ("outpost_select: %s: %s; it will be rewritten from the "
		     "primary if tries change\n", diskname, grub_errmsg);
      grub_errno = GRUB_ERR_NONE;
    }
  if (perr && berr)
    {
      grub_error (GRUB_ERR_BAD_PART_TABLE,
		  "outpost_select: %s: neither the primary nor the backup GPT "
		  "is valid", diskname);
      goto out;
    }
  good = perr ? &backup : &primary;
  h = (struct gpt_header *) good->hdr_sector;
  n = grub_le_to_cpu32 (h->num_entries);
  esize = grub_le_to_cpu32 (h->entry_size);

  for (i = 0; i < n; i++)
    {
      grub_uint64_t a;
      e = (struct gpt_entry *) (good->entries + (grub_size_t) i * esize);
      if (grub_memcmp (e->type_guid, outpost_slot_type, 16) != 0)
	continue;
      a = grub_le_to_cpu64 (e->attributes);
      if (rescue)
	{
	  /* Lowest-numbered slot partition: the first one found.  */
	  best = i;
	  best_attr = a;
	  break;
	}
      if (!(ATTR_TRIES (a) > 0 || ATTR_SUCCESSFUL (a)))
	continue;
      /* Strictly greater: on a tie the earlier (lower-numbered) one stays.  */
      if (best < 0 || ATTR_PRIORITY (a) > ATTR_PRIORITY (best_attr))
	{
	  best = i;
	  best_attr = a;
	}
    }

  if (best < 0)
    {
      grub_error (GRUB_ERR_UNKNOWN_DEVICE,
		  rescue ? "outpost_select: %s: no slot partition at all"
		  : "outpost_select: %s: no bootable slot", diskname);
      goto out;
    }
  e = (struct gpt_entry *) (good->entries + (grub_size_t) best * esize);

  if (!rescue && ATTR_TRIES (best_attr) > 0)
    {
      /* Spend one try before booting, so a slot that hangs or resets
	 during boot runs out of tries and the fallback happens.  */
      grub_uint64_t a = (best_attr & ~ATTR_TRIES_MASK)
	| ((grub_uint64_t) (ATTR_TRIES (best_attr) - 1) << 52);
      grub_uint64_t my = grub_le_to_cpu64 (h->my_lba);
      grub_uint64_t other = grub_le_to_cpu64 (h->alternate_lba);
      grub_uint64_t p_lba, b_lba, p_elba, b_elba;

      e->attributes = grub_cpu_to_le64 (a);

      /* Where the two copies live, derived from the valid one.  */
      p_lba = perr ? other : my;
      b_lba = perr ? my : other;
      if (p_lba != 1 || b_lba <= 1 || b_lba > last_lba)
	{
	  grub_error (GRUB_ERR_BAD_PART_TABLE,
		      "outpost_select: %s: GPT header locations %llu/%llu are "
		      "inconsistent; not writing", diskname,
		      (unsigned long long) p_lba, (unsigned long long) b_lba);
	  goto out;
	}
      /* Keep each copy's entry array where it is; a copy that has to be
	 rebuilt goes to the standard place (LBA 2, or just below the
	 backup header).  */
      p_elba = perr ? 2 : grub_le_to_cpu64 (h->entries_lba);
      if (perr)
	b_elba = grub_le_to_cpu64 (h->entries_lba);
      else if (!berr)
	b_elba = grub_le_to_cpu64
	  (((struct gpt_header *) backup.hdr_sector)->entries_lba);
      else
	b_elba = b_lba - good->entries_sectors;
      if (p_elba + good->entries_sectors > grub_le_to_cpu64 (h->first_usable_lba)
	  || b_elba <= grub_le_to_cpu64 (h->last_usable_lba)
	  || b_elba + good->entries_sectors > b_lba)
	{
	  grub_error (GRUB_ERR_BAD_PART_TABLE,
		      "outpost_select: %s: GPT entry arrays overlap the usable "
		      "area; not writing", diskname);
	  goto out;
	}

      /* Backup first, then primary (ARCHITECTURE.md, Boot selection 3).  */
      if (write_copy (disk, good, good->entries, b_lba, p_lba, b_elba)
	  || write_copy (disk, good, good->entries, p_lba, b_lba, p_elba))
	{
	  grub_error_push ();
	  grub_error (GRUB_ERR_WRITE_ERROR,
		      "outpost_select: %s: writing the GPT failed; not booting "
		      "a slot whose try could not be recorded", diskname);
	  goto out;
	}
      best_attr = a;
    }

  guid_to_text (e->unique_guid, uuid);
  name_to_ascii (e, name);
  grub_snprintf (part, sizeof (part), "gpt%u", (unsigned) best + 1);
  if (set_var (prefix, "part", part) || set_var (prefix, "uuid", uuid)
      || set_var (prefix, "name", name))
    goto out;
  if (state[OPT_SET_ROOT].set)
    {
      char *root = grub_xasprintf ("%s,%s", diskname, part);
      if (!root)
	goto out;
      grub_env_set ("root", root);
      grub_free (root);
    }

 out:
  free_copy (&primary);
  free_copy (&backup);
  if (disk)
    grub_disk_close (disk);
  grub_free (diskname);
  return grub_errno;
}

static grub_extcmd_t cmd;

GRUB_MOD_INIT (outpost_select)
{
  cmd = grub_register_extcmd ("outpost_select", grub_cmd_outpost_select, 0,
			      N_("[--set-prefix=VAR] [--set-root] [--rescue] "
				 "[DISK]"),
			      N_("Choose the Outpost slot to boot (A/B "
				 "priority/tries/successful in GPT attributes)."),
			      options);
}

GRUB_MOD_FINI (outpost_select)
{
  grub_unregister_extcmd (cmd);
}
