"""The panel's words in Chinese (the default) and English: the terms the field uses."""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["LANGUAGES", "REASONS", "translator"]

LANGUAGES = ("zh-CN", "en")

_T: dict[str, tuple[str, str]] = {
    "title": ("meterlink 运维面板", "meterlink operators' panel"),
    "overview": ("总览", "Overview"),
    "concentrators": ("集中器", "Concentrators"),
    "concentrator": ("集中器", "Concentrator"),
    "failures": ("连续失败明细", "Consecutive failures"),
    "audit": ("操作审计", "Audit trail"),
    "meter": ("电能表", "Meter"),
    "meters": ("电能表", "Meters"),
    "coverage_rate": ("全口径抄表成功率", "Full-coverage reading success rate"),
    "timeliness": ("及时率", "Timeliness"),
    "completeness": ("完整率", "Completeness"),
    "consecutive": ("连续失败", "Consecutive failures"),
    "today": ("今日", "Today"),
    "yesterday": ("昨日", "Yesterday"),
    "target": ("目标", "target"),
    "meets": ("达标", "meets the target"),
    "below": ("未达标", "below the target"),
    "no_meters": ("无应抄电表", "no meters expected"),
    "expected": ("应抄", "Expected"),
    "read": ("成功", "Read"),
    "failed": ("失败", "Failed"),
    "timely": ("及时", "Timely"),
    "complete": ("完整", "Complete"),
    "rate": ("成功率", "Rate"),
    "trend": ("近{n}天趋势", "Last {n} days"),
    "trend_note": (
        "历史数据来自 InfluxDB 中的覆盖率点（由覆盖率任务发布）；今日与昨日由台账实时计算。",
        "Earlier days: the coverage points the coverage job publishes to InfluxDB; today and"
        " yesterday computed from the ledger here.",
    ),
    "influx_down": ("InfluxDB 不可用：", "InfluxDB unavailable: "),
    "agents": ("集中器在线状态", "Concentrators online"),
    "online": ("在线", "online"),
    "offline": ("离线", "offline"),
    "unknown": ("未知", "unknown"),
    "mqtt_down": ("MQTT 未连接：", "MQTT not connected: "),
    "by_reason": ("失败原因分布", "Failures by reason"),
    "reason": ("原因", "Reason"),
    "count": ("数量", "Meters"),
    "none": ("无", "none"),
    "not_configured": ("未配置", "not configured"),
    "not_configured_long": (
        "此模块尚未在本系统中启用，暂无数据。",
        "This module is not enabled here yet: no data.",
    ),
    "worst": ("成功率最低的集中器", "Worst concentrators"),
    "all_concentrators": ("全部集中器（成功率由低到高）", "All concentrators, worst first"),
    "status": ("状态", "Status"),
    "since": ("时间", "since"),
    "district": ("台区", "District"),
    "manufacturer": ("厂家", "Manufacturer"),
    "days": ("连续失败天数", "Days"),
    "min_days": ("至少天数", "At least days"),
    "last_reason": ("最近原因", "Last reason"),
    "last_success": ("最近成功", "Last good read"),
    "never": ("从未", "never"),
    "streak": ("连续失败", "Streak"),
    "filter": ("筛选", "Filter"),
    "all": ("全部", "all"),
    "export_csv": ("导出 CSV", "Export CSV"),
    "rows": ("共 {n} 条", "{n} rows"),
    "day": ("数据日", "Data day"),
    "history": ("抄读曲线（日冻结正向有功总电能）", "Reading history (daily freeze, import total)"),
    "no_history": ("没有读数", "no readings"),
    "failures_of_meter": ("失败记录", "Failures"),
    "reads_of_meter": ("成功记录", "Reads"),
    "read_at": ("抄读时间", "Read at"),
    "detail": ("详情", "Detail"),
    "read_now": ("立即抄读", "Read now"),
    "read_now_help": ("向集中器发送签名的抄读命令", "sends a signed read command to the agent"),
    "result": ("结果", "Result"),
    "ok": ("成功", "ok"),
    "failed_action": ("失败", "failed"),
    "login": ("登录", "Log in"),
    "logout": ("退出", "Log out"),
    "user": ("用户名", "User"),
    "password": ("密码", "Password"),
    "bad_login": ("用户名或密码错误", "Wrong user name or password"),
    "locked": (
        "登录失败次数过多，请稍后再试",
        "Too many failed log-ins: try again in a minute",
    ),
    "role_viewer": ("只读", "viewer"),
    "role_operator": ("操作员", "operator"),
    "role_admin": ("管理员", "admin"),
    "forbidden": ("无权执行此操作", "You may not do this"),
    "not_found": ("未找到", "Not found"),
    "computed": ("计算于", "computed at"),
    "live": ("实时更新", "live"),
    "action": ("操作", "Action"),
    "target_col": ("对象", "Target"),
    "outcome": ("结果", "Outcome"),
    "when": ("时间", "When"),
    "who": ("用户", "User"),
    "unarchived": ("档案外电表读数（不计入）", "reads of meters not in the archive (not counted)"),
    "no_data": ("台账中还没有数据日", "the ledger has no data day yet"),
    "section_orders": ("充值与拉合闸工单", "Top-up and relay orders"),
    "section_tariff": ("电价执行核查", "Tariff check"),
    "back": ("返回", "Back"),
    "language": ("English", "中文"),
    "attributes": ("档案", "Archive"),
    "bus": ("通道", "Bus"),
    "agent": ("采集终端", "Agent"),
    "needs_key": (
        "未配置命令密钥（METERLINK_MQTT_COMMAND_KEY），无法发送命令",
        "no command key (METERLINK_MQTT_COMMAND_KEY): commands cannot be sent",
    ),
}

REASONS: dict[str, tuple[str, str]] = {
    "no_reply": ("无应答", "no reply"),
    "timeout": ("应答超时", "reply cut off"),
    "checksum": ("校验错误", "checksum error"),
    "frame_error": ("帧格式错误", "bad frame"),
    "abnormal_reply": ("异常应答", "abnormal reply"),
    "address_mismatch": ("地址不符", "address mismatch"),
    "implausible_value": ("数据异常", "implausible value"),
    "bus_error": ("通道故障", "bus error"),
    "bus_busy": ("通道繁忙", "bus busy"),
    "route_failure": ("载波路由失败", "route failure"),
    "module_busy": ("载波模块忙（组网中）", "carrier module busy"),
    "module_deny": ("载波模块否认", "carrier module denied"),
    "module_timeout": ("载波模块超时", "carrier module timeout"),
    "meter_offline": ("电表离线", "meter offline"),
    "not_attempted": ("未抄读", "not attempted"),
    "storage_full": ("集中器存储已满", "concentrator storage full"),
    "unexplained": ("原因不明", "unexplained"),
}


def translator(lang: str) -> Callable[..., str]:
    i = 1 if lang == "en" else 0

    def t(key: str, **values: object) -> str:
        text = _T[key][i]
        return text.format(**values) if values else text

    return t


def reason_label(reason: str, lang: str) -> str:
    """How a reason appears in tables and the CSV: the label, then the code."""
    pair = REASONS.get(reason)
    if pair is None:
        return reason
    return f"{pair[1 if lang == 'en' else 0]} ({reason})"
