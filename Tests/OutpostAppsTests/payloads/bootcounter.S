# The app runner's test payload: a 512-byte boot sector that keeps a boot
# counter on its own disk. Assembled at test time (BootCounterPayload.swift):
#
#   as --32 [--defsym IGNORE_ACPI=1] -o bootcounter.o bootcounter.S
#   ld -m elf_i386 -Ttext 0x7c00 --oformat binary -o bootcounter.bin bootcounter.o
#
# Disk layout:  LBA 0 = this sector   LBA 1 = the counter (little-endian u16 at offset 0)
#
# It reads LBA 1 through BIOS int 13h (CHS 0/0/2 on the boot drive SeaBIOS
# passes in DL), increments the counter, writes the sector back and prints
# "outpost-app: boot N" on COM1 (port 0x3f8, no BIOS involved), or
# "outpost-app: write refused" when the write fails (a read-only disk).
# Then it idles. Without IGNORE_ACPI it honours the ACPI power button the way
# an OS would: it enables PWRBTN_EN in PM1_EN, waits for PWRBTN_STS and writes
# SLP_EN with SLP_TYP 0 (soft-off) to PM1_CNT. The PM I/O base is read from
# PCI config 0x40 of the PIIX4 PM function (pc, 00:01.3) or the ICH9 LPC
# bridge (q35, 00:1f.0). With IGNORE_ACPI it never looks, like a hung guest.

    .code16
    .text
    .globl _start
    .set buffer, 0x8000          # the counter sector, just above this code

_start:
    cli
    xorw %ax, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movw $0x7c00, %sp
    sti
    movb %dl, drive

    movw $0x0201, %ax            # read 1 sector
    movw $buffer, %bx
    movw $0x0002, %cx            # cylinder 0, sector 2 (LBA 1)
    xorb %dh, %dh
    movb drive, %dl
    int $0x13
    jc read_failed

    incw buffer
    movw $0x0301, %ax            # write 1 sector
    movw $buffer, %bx
    movw $0x0002, %cx
    xorb %dh, %dh
    movb drive, %dl
    int $0x13
    jc write_failed

    movw $msg_boot, %si
    call puts
    movw buffer, %ax
    call putdec
    movw $crlf, %si
    call puts
    jmp idle

read_failed:
    movw $msg_read, %si
    call puts
    jmp idle

write_failed:
    movw $msg_refused, %si
    call puts

idle:
.ifndef IGNORE_ACPI
    call pm_base                 # %dx = PM1 event block, or 0
    testw %dx, %dx
    jz halt_forever
    addw $2, %dx                 # PM1_EN
    movw $0x0100, %ax            # PWRBTN_EN
    outw %ax, %dx
    subw $2, %dx
wait_button:
    hlt                          # the BIOS timer wakes this every 55 ms
    inw %dx, %ax                 # PM1_STS
    testw $0x0100, %ax           # PWRBTN_STS
    jz wait_button
    movw $msg_off, %si
    call puts
    addw $4, %dx                 # PM1_CNT
    movw $0x2000, %ax            # SLP_EN, SLP_TYP 0 = soft-off
    outw %ax, %dx
.endif
halt_forever:
    cli
    hlt
    jmp halt_forever

.ifndef IGNORE_ACPI
# The PM I/O base in %dx (0 when neither chipset answers).
pm_base:
    movl $0x80000b00, %eax       # PIIX4 PM, 00:01.3, vendor/device
    call pci_read
    cmpw $0x8086, %ax
    je 1f
    movl $0x8000f800, %eax       # ICH9 LPC, 00:1f.0
    call pci_read
    cmpw $0x8086, %ax
    je 1f
    xorw %dx, %dx
    ret
1:  orl $0x40, %ebx              # PMBASE
    movl %ebx, %eax
    call pci_read
    andw $0xffc0, %ax
    movw %ax, %dx
    ret

# PCI config dword at address %eax -> %eax; the address stays in %ebx.
pci_read:
    movl %eax, %ebx
    movw $0xcf8, %dx
    outl %eax, %dx
    movw $0xcfc, %dx
    inl %dx, %eax
    ret
.endif

# Prints the NUL-terminated string at %si.
puts:
    lodsb
    testb %al, %al
    jz 2f
    call putc
    jmp puts
2:  ret

# Prints %ax in decimal.
putdec:
    xorw %cx, %cx
    movw $10, %bx
3:  xorw %dx, %dx
    divw %bx
    pushw %dx
    incw %cx
    testw %ax, %ax
    jnz 3b
4:  popw %ax
    addb $'0', %al
    call putc
    loop 4b
    ret

# Writes %al to COM1 once its transmitter is empty; keeps %dx.
putc:
    pushw %dx
    pushw %ax
    movw $0x3fd, %dx             # line status register
5:  inb %dx, %al
    testb $0x20, %al
    jz 5b
    popw %ax
    movw $0x3f8, %dx
    outb %al, %dx
    popw %dx
    ret

drive:       .byte 0x80
msg_boot:    .asciz "outpost-app: boot "
msg_refused: .asciz "outpost-app: write refused\r\n"
msg_read:    .asciz "outpost-app: read failed\r\n"
msg_off:     .asciz "outpost-app: power button\r\n"
crlf:        .asciz "\r\n"

    .org 510
    .word 0xaa55
