package link

import (
	"encoding/binary"

	"github.com/vishvananda/netlink/nl"
)

func native() binary.ByteOrder { return nl.NativeEndian() }
