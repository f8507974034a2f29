"""Site file and device profiles: schema, loading, located validation, secrets.

The loader lives in ``agent.config.loader``; this is its public face for the core and the tools.
"""

from agent.config.loader import (
    ProfileHeader,
    Secrets,
    Site,
    SiteInfo,
    SiteModel,
    UplinkConfig,
    default_profile_dirs,
    load_profile,
    load_profiles,
    load_site,
    parse_profile,
)

__all__ = [
    'ProfileHeader',
    'Secrets',
    'Site',
    'SiteInfo',
    'SiteModel',
    'UplinkConfig',
    'default_profile_dirs',
    'load_profile',
    'load_profiles',
    'load_site',
    'parse_profile',
]
