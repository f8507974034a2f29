"""Access-control panels (ONVIF Profile C): placeholder so ``drivers.access.sim`` imports; the driver owns it."""
