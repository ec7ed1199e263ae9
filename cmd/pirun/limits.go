package main

import (
	"github.com/spf13/cobra"

	"github.com/pirun/pirun/runtime"
)

// limitFlags are the resource limits of run and spawn.
type limitFlags struct {
	memory, cpus    string
	pids            int64
	capAdd, capDrop []string
	devices         []string
	seccomp         string
}

func (l *limitFlags) flags(cmd *cobra.Command) {
	cmd.Flags().StringVarP(&l.memory, "memory", "m", "", "memory limit per container, e.g. 8m or 1g (at least 6m)")
	cmd.Flags().StringVar(&l.cpus, "cpus", "", "CPU time per container, in CPUs, e.g. 0.5")
	cmd.Flags().Int64Var(&l.pids, "pids-limit", 0, "most processes and threads per container")
	cmd.Flags().StringSliceVar(&l.capAdd, "cap-add", nil, "add capabilities to the default set (e.g. NET_ADMIN, or ALL)")
	cmd.Flags().StringSliceVar(&l.capDrop, "cap-drop", nil, "drop capabilities from the default set (e.g. NET_RAW, or ALL)")
	cmd.Flags().StringArrayVar(&l.devices, "device", nil, "make a host device available, HOST[:CONTAINER] (e.g. /dev/gpiomem)")
	cmd.Flags().StringVar(&l.seccomp, "seccomp", runtime.SeccompDefault, "system call filter: default (Docker's profile) or unconfined")
}

func (l *limitFlags) apply(cfg *runtime.Config) error {
	var err error
	if l.memory != "" {
		if cfg.Resources.Memory, err = runtime.ParseMemory(l.memory); err != nil {
			return err
		}
	}
	if l.cpus != "" {
		if cfg.Resources.CPUs, err = runtime.ParseCPUs(l.cpus); err != nil {
			return err
		}
	}
	cfg.Resources.PidsLimit = l.pids
	cfg.CapAdd, cfg.CapDrop = l.capAdd, l.capDrop
	cfg.Seccomp = l.seccomp
	for _, s := range l.devices {
		d, err := runtime.ParseDevice(s)
		if err != nil {
			return err
		}
		cfg.Devices = append(cfg.Devices, d)
	}
	return nil
}
