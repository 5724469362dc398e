// virtio-forwarder's configuration as its users have it, for the tests that check vio4wd takes it
// unchanged: the variable=value lines of its shipped /etc/default/virtioforwarder (values only),
// and where to find the original's sources when a checkout is at hand (VIO4WD_ORIGINAL_SRC).
import { existsSync, statSync } from 'node:fs';
import { join } from 'node:path';

/** The variable=value lines of virtio-forwarder's shipped /etc/default/virtioforwarder, in its order. */
export const ORIGINAL_SHIPPED_LINES = [
  'VIRTIOFWD_CPU_MASK=1,2',
  'VIRTIOFWD_LOG_LEVEL=6',
  'VIRTIOFWD_IPC_PORT_CONTROL=y',
  'VIRTIOFWD_OVSDB_SOCK_PATH=',
  'VIRTIOFWD_JUMBO=y',
  'VIRTIOFWD_MRGBUF=y',
  'VIRTIOFWD_TSO=',
  'VIRTIOFWD_SOCKET_OWNER=',
  'VIRTIOFWD_SOCKET_GROUP=',
  'VIRTIOFWD_HUGETLBFS_MOUNT_POINT=/dev/hugepages',
  'VIRTIOFWD_STATIC_VFS=',
  'VIRTIOFWD_DYNAMIC_SOCKETS=',
  'VIRTIOFWD_CPU_NIC_SAME_NUMA=',
  'VIRTIOFWD_VFIO_VF_TOKEN=',
  'VIO4WD_CORE_SCHED_ENABLE=true',
  'VIO4WD_CORE_SCHED_SENSITIVITY=',
  'VIO4WD_CORE_SCHED_LOG_LEVEL=6',
  'VIO4WD_CORE_SCHED_POLL_INTERVAL=',
  'VIO4WD_CORE_SCHED_GLOBAL_NUMA_OPT=',
  'VIRTIOFWD_CPU_PINS=',
  'VIRTIOFWD_PID_DIR=/var/run',
  'VIRTIOFWD_ZMQ_CONFIG_EP=',
  'VIRTIOFWD_ZMQ_PORT_CONTROL_EP=ipc:///var/run/virtio-forwarder/port_control',
  'VIRTIOFWD_ZMQ_STATS_EP=ipc:///var/run/virtio-forwarder/stats',
  'VIRTIOFWD_ZMQ_CORE_SCHED_EP=ipc:///var/run/virtio-forwarder/core_sched',
  'VIRTIOFWD_SOCKET_DIR=/tmp/virtio-forwarder',
  'VIRTIOFWD_SOCKET_FNAME_PATTERN=',
  'VIRTIOFWD_BINARY=@BINDIR@/virtio-forwarder',
  'VIRTIOFWD_MASTER_LCORE=',
  'VIRTIOFWD_VHOST_CLIENT=y',
  'VIRTIOFWD_ZERO_COPY=',
  'VIRTIOFWD_BIND_VFIO_PCI=',
];


/** The shipped file of an original checkout named by VIO4WD_ORIGINAL_SRC, or null with the reason. */
export function originalShippedFile(env: NodeJS.ProcessEnv = process.env): { path: string } | { skip: string } {
  const src = env.VIO4WD_ORIGINAL_SRC;
  if (!src) {
    return { skip: "VIO4WD_ORIGINAL_SRC is not set: point it at a checkout of virtio-forwarder (or a directory holding its startup/virtioforwarder) to test the original's own shipped file" };
  }
  // A checkout, or the file itself (git show HEAD:startup/virtioforwarder > FILE).
  for (const path of [join(src, 'startup', 'virtioforwarder'), src]) {
    if (existsSync(path) && statSync(path).isFile()) return { path };
  }
  return { skip: `VIO4WD_ORIGINAL_SRC=${src} holds no startup/virtioforwarder` };
}
