package runtime

import "errors"

// Sentinel errors, wrapped with the object's name: callers use errors.Is.
var (
	// ErrNotFound: no container has that id, id prefix or name.
	ErrNotFound = errors.New("no such container")
	// ErrAmbiguous: an id prefix matches more than one container.
	ErrAmbiguous = errors.New("ambiguous container id prefix")
	// ErrNameInUse: a container already has that name.
	ErrNameInUse = errors.New("name already in use")
	// ErrInvalidName: a name that is not [a-zA-Z0-9][a-zA-Z0-9_.-]* or too long.
	ErrInvalidName = errors.New("invalid container name")
	// ErrInvalidConfig: a configuration that cannot be started.
	ErrInvalidConfig = errors.New("invalid container configuration")
	// ErrRunning: the container runs and the operation needs it stopped (use force).
	ErrRunning = errors.New("container is running")
	// ErrExited: the container exited right after it started.
	ErrExited = errors.New("container exited at once")
	// ErrHostLimit: a kernel limit (pid_max, threads-max, namespaces) leaves
	// no room for the containers asked for; nothing was started.
	ErrHostLimit = errors.New("host limit reached")
)
