#!/bin/sh
# A VM on relay 1 of virtio-forwarder: the relay listens on its vhost-user socket
# (VIRTIOFWD_SOCKET_DIR/virtio-forwarder1.sock) and our VMM connects as the front-end.
# Guest memory must be shared with the relay (mem-share=on).
exec vio4wd-vmm \
  -name vm1 \
  -machine microvm,mem-share=on \
  -kernel /var/lib/vio4wd/vmlinux \
  -initrd /var/lib/vio4wd/initramfs.cpio.gz \
  -append "console=ttyS0 reboot=k panic=1 nokaslr" \
  -smp cpus=2 \
  -m 512M \
  -chardev socket,id=char0,path=/var/run/virtio-forwarder/virtio-forwarder1.sock \
  -netdev vhost-user,id=net0,chardev=char0 \
  -device virtio-net-device,netdev=net0,mac=52:54:00:00:01:01 \
  -serial stdio \
  -api-channel unix:/run/vio4wd-vm1.api \
  -D /var/log/vio4wd-vm1.log
