/*
 * A tiny test guest for vio4wd-vmm: prints to the 8250 serial port, exercises a virtio-blk device
 * if there is one, then finds a virtio-net device on virtio-mmio and answers ARP requests and
 * ICMP echo requests for its address. It sleeps in `hlt` between interrupts (virtio irq through
 * the IOAPIC, plus a slow LAPIC timer as a safety net), so an idle guest costs the host nothing.
 *
 * Command line (PVH start info or boot_params): ip=A.B.C.D sets the address (default 10.0.2.15);
 * tiny.exit ends the VM right after the greeting (i8042 reset); tiny.exit-after=N ends it
 * after answering N echo requests; tiny.blk-reads=N times N one-sector reads; tiny.blk-exit ends
 * the VM after the disk checks; tiny.net-reinit initialises the NIC, resets it and initialises
 * it again (what a rebooting driver does); tiny.exception executes ud2 (the guest's handler
 * names the exception and resets); tiny.triple-fault executes ud2 with an empty IDT.
 * A CPU exception after the IDT is set up is printed ("tiny-guest: exception N ...") and resets.
 */
typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long u64;

#define MMIO_BASE 0xd0000000UL
#define MMIO_STRIDE 0x1000UL
#define MMIO_MAX_DEVICES 11
#define QUEUE_SIZE 16
#define BUFFER_SIZE 2048
#define NET_HDR 12
#define IRQ_VECTOR 0x30
#define TIMER_VECTOR 0x31

static inline void outb(u16 port, u8 v) { __asm__ volatile("outb %0, %1" : : "a"(v), "Nd"(port)); }
static inline u8 inb(u16 port) { u8 v; __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline u32 rd32(u64 a) { return *(volatile u32 *)a; }
static inline void wr32(u64 a, u32 v) { *(volatile u32 *)a = v; }
static inline u8 rd8(u64 a) { return *(volatile u8 *)a; }
#define barrier() __asm__ volatile("mfence" ::: "memory")

void *memset(void *d, int c, unsigned long n) { u8 *p = d; while (n--) *p++ = (u8)c; return d; }
void *memcpy(void *d, const void *s, unsigned long n) { u8 *p = d; const u8 *q = s; while (n--) *p++ = *q++; return d; }

static void putc_serial(char c) {
  while (!(inb(0x3f8 + 5) & 0x20)) {}
  outb(0x3f8, (u8)c);
}
static void puts_serial(const char *s) { while (*s) { if (*s == '\n') putc_serial('\r'); putc_serial(*s++); } }
static void putdec(u32 v) {
  char b[12]; int i = 0;
  do { b[i++] = (char)('0' + v % 10); v /= 10; } while (v);
  while (i) putc_serial(b[--i]);
}
static void puthex2(u8 v) { const char *h = "0123456789abcdef"; putc_serial(h[v >> 4]); putc_serial(h[v & 15]); }

/* ---- command line ---- */
static const char *cmdline;
static const char *find_arg(const char *key) {
  const char *p = cmdline;
  while (p && *p) {
    while (*p == ' ') p++;
    const char *k = key, *q = p;
    while (*k && *q == *k) { k++; q++; }
    if (!*k && (*q == '=' || *q == ' ' || !*q)) return *q == '=' ? q + 1 : q;
    while (*p && *p != ' ') p++;
  }
  return 0;
}
static u32 parse_dec(const char **p) { u32 v = 0; while (**p >= '0' && **p <= '9') v = v * 10 + (u32)(*(*p)++ - '0'); return v; }

/* ---- interrupts ---- */
extern void irq_entry(void);
extern const u64 exception_table[32];
struct idt_entry { u16 off0, sel; u8 ist, attr; u16 off1; u32 off2, zero; } __attribute__((packed));
static struct idt_entry idt[256] __attribute__((aligned(16)));
struct { u16 limit; u64 base; } __attribute__((packed)) idtr;

static void ioapic_route(u32 gsi, u32 vector) {
  wr32(0xfec00000UL, 0x10 + 2 * gsi);
  wr32(0xfec00010UL, vector); /* fixed, physical, edge, active high, unmasked */
  wr32(0xfec00000UL, 0x11 + 2 * gsi);
  wr32(0xfec00010UL, 0); /* destination APIC 0 */
}

static void puthex64(u64 v) { for (int s = 56; s >= 0; s -= 8) puthex2((u8)(v >> s)); }

static void reset_vm(void);

/* Called from exception_common with the stub's frame: vector, error code, rip, cs, rflags, rsp. */
void guest_exception(const u64 *frame) {
  u64 cr2;
  __asm__ volatile("mov %%cr2, %0" : "=r"(cr2));
  puts_serial("\ntiny-guest: exception "); putdec((u32)frame[0]);
  puts_serial(" error 0x"); puthex64(frame[1]);
  puts_serial(" rip 0x"); puthex64(frame[2]);
  puts_serial(" rsp 0x"); puthex64(frame[5]);
  puts_serial(" cr2 0x"); puthex64(cr2);
  puts_serial("\n");
  reset_vm();
}

static void setup_interrupts(void) {
  for (int i = 0; i < 256; i++) {
    u64 h = i < 32 ? exception_table[i] : (u64)irq_entry;
    idt[i].off0 = (u16)h; idt[i].sel = 0x08; idt[i].ist = 0; idt[i].attr = 0x8e;
    idt[i].off1 = (u16)(h >> 16); idt[i].off2 = (u32)(h >> 32); idt[i].zero = 0;
  }
  idtr.limit = sizeof(idt) - 1; idtr.base = (u64)idt;
  __asm__ volatile("lidt %0" : : "m"(idtr));
  outb(0x21, 0xff); outb(0xa1, 0xff); /* the 8259s stay masked: everything goes through the IOAPIC */
  wr32(0xfee000f0UL, 0x1ff);          /* LAPIC on, spurious vector 0xff */
  wr32(0xfee00080UL, 0);              /* accept every priority */
  wr32(0xfee003e0UL, 0x3);            /* timer divide by 16 */
  wr32(0xfee00320UL, TIMER_VECTOR | (1 << 17)); /* periodic */
  wr32(0xfee00380UL, 6250000);        /* about 100 ms at KVM's 1 GHz APIC bus */
}

/* ---- virtio split rings ---- */
struct desc { u64 addr; u32 len; u16 flags, next; };
struct avail { u16 flags, idx, ring[QUEUE_SIZE], used_event; };
struct used_elem { u32 id, len; };
struct used { u16 flags, idx; struct used_elem ring[QUEUE_SIZE]; u16 avail_event; };
struct queue {
  struct desc d[QUEUE_SIZE] __attribute__((aligned(16)));
  struct avail a __attribute__((aligned(2)));
  struct used u __attribute__((aligned(4096)));
  u16 avail_idx, last_used;
};
static struct queue rxq __attribute__((aligned(4096)));
static struct queue txq __attribute__((aligned(4096)));
static u8 rxbuf[QUEUE_SIZE][BUFFER_SIZE] __attribute__((aligned(4096)));
static u8 txbuf[QUEUE_SIZE][BUFFER_SIZE] __attribute__((aligned(4096)));

static u64 dev;
static u8 mac[6];
static u8 ip[4] = {10, 0, 2, 15};
static u32 echo_count, exit_after;

static int setup_queue(u64 base, u32 index, struct queue *q) {
  memset(q, 0, sizeof(*q));
  wr32(base + 0x30, index);
  u32 max = rd32(base + 0x34);
  if (max < QUEUE_SIZE) return -1;
  wr32(base + 0x38, QUEUE_SIZE);
  u64 d = (u64)q->d, a = (u64)&q->a, u = (u64)&q->u;
  wr32(base + 0x80, (u32)d); wr32(base + 0x84, (u32)(d >> 32));
  wr32(base + 0x90, (u32)a); wr32(base + 0x94, (u32)(a >> 32));
  wr32(base + 0xa0, (u32)u); wr32(base + 0xa4, (u32)(u >> 32));
  wr32(base + 0x44, 1);
  return 0;
}

static u64 find_device(u32 device_id) {
  for (u32 i = 0; i < MMIO_MAX_DEVICES; i++) {
    u64 base = MMIO_BASE + i * MMIO_STRIDE;
    if (rd32(base) == 0x74726976 && rd32(base + 4) == 2 && rd32(base + 8) == device_id) return base;
  }
  return 0;
}

static int virtio_net_init(void) {
  dev = find_device(1);
  if (!dev) return -1;
  wr32(dev + 0x70, 0);
  wr32(dev + 0x70, 1);
  wr32(dev + 0x70, 1 | 2);
  wr32(dev + 0x14, 0);
  u32 lo = rd32(dev + 0x10);
  wr32(dev + 0x14, 1);
  u32 hi = rd32(dev + 0x10);
  if (!(hi & 1)) return -2;
  wr32(dev + 0x24, 0); wr32(dev + 0x20, lo & (1u << 5)); /* MAC only */
  wr32(dev + 0x24, 1); wr32(dev + 0x20, 1);              /* VERSION_1 */
  wr32(dev + 0x70, 1 | 2 | 8);
  if (!(rd32(dev + 0x70) & 8)) return -3;
  for (int i = 0; i < 6; i++) mac[i] = (lo & (1u << 5)) ? rd8(dev + 0x100 + i) : (u8)(0x52 + i);
  if (setup_queue(dev, 0, &rxq) || setup_queue(dev, 1, &txq)) return -4;
  for (u16 i = 0; i < QUEUE_SIZE; i++) {
    rxq.d[i].addr = (u64)rxbuf[i]; rxq.d[i].len = BUFFER_SIZE; rxq.d[i].flags = 2; /* device writes */
    rxq.a.ring[i] = i;
    txq.d[i].addr = (u64)txbuf[i]; txq.d[i].flags = 0;
  }
  barrier();
  rxq.avail_idx = QUEUE_SIZE;
  rxq.a.idx = QUEUE_SIZE;
  wr32(dev + 0x70, 1 | 2 | 8 | 4);
  barrier();
  wr32(dev + 0x50, 0);
  return 0;
}

static u16 csum(const u8 *p, u32 len) {
  u32 s = 0;
  for (u32 i = 0; i + 1 < len; i += 2) s += (u32)(p[i] << 8 | p[i + 1]);
  if (len & 1) s += (u32)(p[len - 1] << 8);
  while (s >> 16) s = (s & 0xffff) + (s >> 16);
  return (u16)~s;
}

static void transmit(const u8 *frame, u32 len) {
  u16 slot = txq.avail_idx % QUEUE_SIZE;
  /* All slots in flight: wait (rare) for the back-end to hand some back. */
  while ((u16)(txq.avail_idx - *(volatile u16 *)&txq.u.idx) >= QUEUE_SIZE) __asm__ volatile("pause");
  memset(txbuf[slot], 0, NET_HDR);
  memcpy(txbuf[slot] + NET_HDR, frame, len);
  txq.d[slot].len = NET_HDR + len;
  txq.a.ring[slot] = slot;
  barrier();
  txq.avail_idx++;
  *(volatile u16 *)&txq.a.idx = txq.avail_idx;
  barrier();
  wr32(dev + 0x50, 1);
}

static u8 out[1600];

static void handle_frame(u8 *f, u32 len) {
  if (len < 14) return;
  u16 type = (u16)(f[12] << 8 | f[13]);
  if (type == 0x0806 && len >= 42) {
    u8 *a = f + 14;
    if (a[6] != 0 || a[7] != 1) return; /* requests only */
    if (a[24] != ip[0] || a[25] != ip[1] || a[26] != ip[2] || a[27] != ip[3]) return;
    memcpy(out, f + 6, 6); memcpy(out + 6, mac, 6); out[12] = 0x08; out[13] = 0x06;
    u8 *r = out + 14;
    r[0] = 0; r[1] = 1; r[2] = 8; r[3] = 0; r[4] = 6; r[5] = 4; r[6] = 0; r[7] = 2;
    memcpy(r + 8, mac, 6); memcpy(r + 14, ip, 4);
    memcpy(r + 18, a + 8, 6); memcpy(r + 24, a + 14, 4);
    transmit(out, 42);
    puts_serial("tiny-guest: arp reply\n");
  } else if (type == 0x0800 && len >= 34) {
    u8 *h = f + 14;
    u32 ihl = (u32)(h[0] & 15) * 4;
    u32 total = (u32)(h[2] << 8 | h[3]);
    if ((h[0] >> 4) != 4 || ihl < 20 || total < ihl + 8 || 14 + total > len) return;
    if (h[9] != 1 || h[16] != ip[0] || h[17] != ip[1] || h[18] != ip[2] || h[19] != ip[3]) return;
    u8 *icmp = h + ihl;
    if (icmp[0] != 8) return;
    memcpy(out, f + 6, 6); memcpy(out + 6, mac, 6); out[12] = 0x08; out[13] = 0x00;
    u8 *o = out + 14;
    memcpy(o, h, total);
    memcpy(o + 12, h + 16, 4); memcpy(o + 16, h + 12, 4);
    o[8] = 64; o[10] = 0; o[11] = 0;
    u16 c = csum(o, ihl); o[10] = (u8)(c >> 8); o[11] = (u8)c;
    u8 *oi = o + ihl;
    oi[0] = 0; oi[2] = 0; oi[3] = 0;
    c = csum(oi, total - ihl); oi[2] = (u8)(c >> 8); oi[3] = (u8)c;
    transmit(out, 14 + total);
    echo_count++;
    puts_serial("tiny-guest: icmp echo reply seq "); putdec((u32)(icmp[6] << 8 | icmp[7])); puts_serial("\n");
  }
}


/* ---- virtio-blk: one request in flight, three descriptors (header, data, status) ---- */
#define BLK_T_IN 0
#define BLK_T_OUT 1
#define BLK_T_GET_ID 8
static struct queue blkq __attribute__((aligned(4096)));
static struct { u32 type, reserved; u64 sector; } blkhdr;
static u8 blkdata[512] __attribute__((aligned(512)));
static volatile u8 blkstatus;
static u64 blkdev, blk_sectors;
static u32 blk_ro, interrupts_ready;

static void wait_used(struct queue *q) {
  for (;;) {
    __asm__ volatile("cli");
    if (*(volatile u16 *)&q->u.idx != q->last_used) break;
    __asm__ volatile("sti; hlt" ::: "memory");
  }
  __asm__ volatile("sti");
  barrier();
  q->last_used++;
}

/* Returns the status byte the device wrote (0xff if it wrote none). */
static u32 blk_request(u32 type, u64 sector, u32 len) {
  blkhdr.type = type; blkhdr.reserved = 0; blkhdr.sector = sector;
  blkstatus = 0xff;
  blkq.d[0].addr = (u64)&blkhdr; blkq.d[0].len = 16; blkq.d[0].flags = 1; blkq.d[0].next = len ? 1 : 2;
  blkq.d[1].addr = (u64)blkdata; blkq.d[1].len = len; blkq.d[1].flags = (u16)(1 | (type == BLK_T_OUT ? 0 : 2)); blkq.d[1].next = 2;
  blkq.d[2].addr = (u64)&blkstatus; blkq.d[2].len = 1; blkq.d[2].flags = 2; blkq.d[2].next = 0;
  blkq.a.ring[blkq.avail_idx % QUEUE_SIZE] = 0;
  barrier();
  blkq.avail_idx++;
  *(volatile u16 *)&blkq.a.idx = blkq.avail_idx;
  barrier();
  wr32(blkdev + 0x50, 0);
  wait_used(&blkq);
  wr32(blkdev + 0x64, rd32(blkdev + 0x60)); /* acknowledge InterruptStatus */
  return blkstatus;
}

static int virtio_blk_init(void) {
  blkdev = find_device(2);
  if (!blkdev) return -1;
  wr32(blkdev + 0x70, 0);
  wr32(blkdev + 0x70, 1 | 2);
  wr32(blkdev + 0x14, 0);
  u32 lo = rd32(blkdev + 0x10);
  wr32(blkdev + 0x14, 1);
  if (!(rd32(blkdev + 0x10) & 1)) return -2;
  blk_ro = (lo >> 5) & 1;
  wr32(blkdev + 0x24, 0); wr32(blkdev + 0x20, lo & (1u << 5));
  wr32(blkdev + 0x24, 1); wr32(blkdev + 0x20, 1);
  wr32(blkdev + 0x70, 1 | 2 | 8);
  if (!(rd32(blkdev + 0x70) & 8)) return -3;
  blk_sectors = (u64)rd32(blkdev + 0x100) | ((u64)rd32(blkdev + 0x104) << 32);
  if (setup_queue(blkdev, 0, &blkq)) return -4;
  wr32(blkdev + 0x70, 1 | 2 | 8 | 4);
  return 0;
}

static void print_block(u32 n) {
  putc_serial('"');
  for (u32 i = 0; i < n && blkdata[i]; i++) putc_serial(blkdata[i] >= 32 && blkdata[i] < 127 ? (char)blkdata[i] : '.');
  putc_serial('"');
}

static void blk_checks(u32 reads) {
  int rc = virtio_blk_init();
  if (rc) { puts_serial("tiny-guest: blk init failed ("); putdec((u32)-rc); puts_serial(")\n"); return; }
  ioapic_route((u32)((blkdev - MMIO_BASE) / MMIO_STRIDE + 5), IRQ_VECTOR);
  puts_serial("tiny-guest: blk sectors "); putdec((u32)blk_sectors); puts_serial(" ro "); putdec(blk_ro); puts_serial("\n");
  memset(blkdata, 0, sizeof(blkdata));
  u32 st = blk_request(BLK_T_GET_ID, 0, 20);
  blkdata[20] = 0;
  puts_serial("tiny-guest: blk id "); print_block(20); puts_serial(" status "); putdec(st); puts_serial("\n");
  st = blk_request(BLK_T_IN, 0, 512);
  puts_serial("tiny-guest: blk sector 0 "); print_block(64); puts_serial(" status "); putdec(st); puts_serial("\n");
  memset(blkdata, 0, sizeof(blkdata));
  const char *msg = "written by the tiny guest";
  for (u32 i = 0; msg[i]; i++) blkdata[i] = (u8)msg[i];
  st = blk_request(BLK_T_OUT, 1, 512);
  puts_serial("tiny-guest: blk write sector 1 status "); putdec(st); puts_serial("\n");
  memset(blkdata, 0, sizeof(blkdata));
  st = blk_request(BLK_T_IN, 1, 512);
  puts_serial("tiny-guest: blk sector 1 "); print_block(64); puts_serial(" status "); putdec(st); puts_serial("\n");
  st = blk_request(BLK_T_IN, blk_sectors, 512);
  puts_serial("tiny-guest: blk read past the end status "); putdec(st); puts_serial("\n");
  st = blk_request(BLK_T_IN, 0, 100);
  puts_serial("tiny-guest: blk short read status "); putdec(st); puts_serial("\n");
  st = blk_request(99, 0, 0);
  puts_serial("tiny-guest: blk unknown request status "); putdec(st); puts_serial("\n");
  if (reads) {
    puts_serial("tiny-guest: blk reads start\n");
    u32 ok = 0;
    for (u32 i = 0; i < reads; i++) ok += blk_request(BLK_T_IN, i % blk_sectors, 512) == 0;
    puts_serial("tiny-guest: blk reads done "); putdec(ok); puts_serial("\n");
  }
  puts_serial("tiny-guest: blk done\n");
}

static void reset_vm(void) {
  puts_serial("tiny-guest: bye\n");
  for (;;) outb(0x64, 0xfe);
}

void guest_main(const u8 *boot_info, u32 pvh) {
  /* PVH: hvm_start_info.cmdline_paddr; otherwise boot_params.hdr.cmd_line_ptr. */
  cmdline = pvh ? (const char *)*(const u64 *)(boot_info + 24) : (const char *)(u64) * (const u32 *)(boot_info + 0x228);
  puts_serial("tiny-guest: hello from the tiny guest\n");
  const char *v = find_arg("ip");
  if (v && *v) {
    for (int i = 0; i < 4; i++) { ip[i] = (u8)parse_dec(&v); if (*v == '.') v++; }
  }
  if (find_arg("tiny.exit") && !find_arg("tiny.exit-after")) reset_vm();
  /* Faults on purpose, so that tests can see how a guest fault is reported: an exception the
     guest's own handler names, or (with an empty IDT) a triple fault that only the VMM sees. */
  if (find_arg("tiny.exception")) { setup_interrupts(); __asm__ volatile("ud2"); }
  if (find_arg("tiny.triple-fault")) {
    idtr.limit = 0;
    __asm__ volatile("lidt %0; ud2" : : "m"(idtr));
  }
  v = find_arg("tiny.exit-after");
  if (v && *v) exit_after = parse_dec(&v);

  if (find_device(2)) {
    setup_interrupts();
    interrupts_ready = 1;
    v = find_arg("tiny.blk-reads");
    blk_checks(v && *v ? parse_dec(&v) : 0);
    if (find_arg("tiny.blk-exit")) reset_vm();
  }

  int rc = virtio_net_init();
  if (!rc && find_arg("tiny.net-reinit")) {
    puts_serial("tiny-guest: net reset and re-initialised\n");
    rc = virtio_net_init();
  }
  if (rc) {
    puts_serial("tiny-guest: no usable virtio-net device (");
    putdec((u32)-rc);
    puts_serial(")\n");
    for (;;) __asm__ volatile("cli; hlt");
  }
  puts_serial("tiny-guest: virtio-net mac ");
  for (int i = 0; i < 6; i++) { puthex2(mac[i]); if (i < 5) putc_serial(':'); }
  puts_serial(" ip ");
  for (int i = 0; i < 4; i++) { putdec(ip[i]); if (i < 3) putc_serial('.'); }
  puts_serial("\ntiny-guest: net ready\n");

  if (!interrupts_ready) setup_interrupts();
  ioapic_route((u32)((dev - MMIO_BASE) / MMIO_STRIDE + 5), IRQ_VECTOR); /* GSI 5 + device index */
  for (;;) {
    __asm__ volatile("cli");
    u16 used = *(volatile u16 *)&rxq.u.idx;
    if (used == rxq.last_used) {
      __asm__ volatile("sti; hlt" ::: "memory"); /* sti's shadow makes the pair atomic */
      continue;
    }
    barrier();
    while (rxq.last_used != used) {
      struct used_elem *e = &rxq.u.ring[rxq.last_used % QUEUE_SIZE];
      u32 id = e->id % QUEUE_SIZE;
      if (e->len > NET_HDR) handle_frame(rxbuf[id] + NET_HDR, e->len - NET_HDR);
      rxq.a.ring[rxq.avail_idx % QUEUE_SIZE] = (u16)id;
      rxq.avail_idx++;
      rxq.last_used++;
    }
    barrier();
    *(volatile u16 *)&rxq.a.idx = rxq.avail_idx;
    barrier();
    wr32(dev + 0x50, 0);
    if (exit_after && echo_count >= exit_after) reset_vm();
  }
}
