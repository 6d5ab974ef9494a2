package testboot

import "syscall"

// ForceReboot writes every file system's dirty data out and resets the
// machine, without gokrazy: the guard's last resort. It returns only on
// failure.
func ForceReboot() error {
	syscall.Sync()
	return syscall.Reboot(syscall.LINUX_REBOOT_CMD_RESTART)
}
