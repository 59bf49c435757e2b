"""The provider's API hosts: a module of their own, so that the settings can name them without
loading the client (and its HTTP stack) in every process that reads a setting."""

PRIMARY_URL = "https://api.mch.weixin.qq.com"
BACKUP_URL = "https://api2.mch.weixin.qq.com"
