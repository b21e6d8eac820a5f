/*
 * The microVM's guest program: runs at CPL3 in 64-bit mode with identity paging.
 * Everything it remembers between iterations lives in the control block, so a
 * host (or the software vCPU) can read the counter/checksum from RAM; mid-iteration
 * state lives in registers, which is why a full vCPU state save is needed.
 *
 * Control block (CTL, guest-physical 0x9000), little-endian:
 *   0x08 u64 counter      iterations completed
 *   0x10 u32 checksum     sum mod 2^32 of every u32 in the data region
 *   0x14 u32 rng          xorshift32 state (never 0)
 *   0x18 u32 cursor       next page index within the region
 *   0x20 u32 region_start first guest page of the data region
 *   0x24 u32 region_pages pages in the data region (>= 1)
 *   0x28 u32 pages_per_iter
 *   0x2c u32 spin         busy-loop count after each iteration (dirty-rate knob)
 *   0x30 u32 stop         host sets non-zero: the guest exits at the next iteration
 *                         boundary by storing to EXIT_MMIO (no RAM there, so KVM
 *                         reports an MMIO exit), and re-checks after being resumed.
 *                         Not OUT: under PVM, I/O at CPL3 faults even with IOPL=3.
 * Regenerate workload.bin with ./build.sh after editing.
 */
    .code64
    .set CTL, 0x9000
    /* layout.rs EXIT_VADDR: sign-extended from the 32-bit displacement, mapped
       onto the exit page at 0xc0000000 just above the largest RAM. */
    .set EXIT_MMIO, 0xffffffffc0000000
    .text
    .globl _start
_start:
    mov $CTL, %ebx
top:
    mov 0x30(%rbx), %eax
    test %eax, %eax
    jz run
    mov %eax, EXIT_MMIO
    jmp top
run:
    mov 0x14(%rbx), %eax        /* x */
    mov 0x18(%rbx), %ecx        /* cursor */
    mov 0x28(%rbx), %esi        /* writes left in this iteration */
    test %esi, %esi
    jz done
write:
    mov %eax, %edx              /* xorshift32 (13, 17, 5) */
    shl $13, %edx
    xor %edx, %eax
    mov %eax, %edx
    shr $17, %edx
    xor %edx, %eax
    mov %eax, %edx
    shl $5, %edx
    xor %edx, %eax
    mov 0x20(%rbx), %edi        /* addr = (start + cursor) * 4096 + (x & 0xffc) */
    add %ecx, %edi
    shl $12, %rdi
    mov %eax, %edx
    and $0xffc, %edx
    add %rdx, %rdi
    mov (%rdi), %edx            /* checksum += x - old */
    mov %eax, (%rdi)
    neg %edx
    add %eax, %edx
    add %edx, 0x10(%rbx)
    inc %ecx                    /* cursor = (cursor + 1) mod pages */
    cmp 0x24(%rbx), %ecx
    jb 1f
    xor %ecx, %ecx
1:
    dec %esi
    jnz write
done:
    mov %eax, 0x14(%rbx)
    mov %ecx, 0x18(%rbx)
    incq 0x08(%rbx)
    mov 0x2c(%rbx), %ecx
    test %ecx, %ecx
    jz top
2:
    pause
    dec %ecx
    jnz 2b
    jmp top
